# Trainer image: `python -m pipeline.train` on CPU (for GPUs, base on a CUDA image and
# install tensorflow[and-cuda]==2.16.2 under the same constraints).
# Build from the repo root:
#   docker build -f docker/trainer.Dockerfile -t cvr-trainer:0.1.0 .
# Run (data and model dir on a mounted volume or gs:// paths):
#   docker run --rm -v "$PWD/runs:/runs" cvr-trainer:0.1.0 \
#     --config configs/esmm.yaml --data /runs/demo/data --model_dir /runs/demo/model
# Multi-worker: one container per worker, each with its own TF_CONFIG (-e TF_CONFIG=...)
# and --strategy multi_worker.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/cvr
COPY constraints.txt setup.py ./
COPY configs/ configs/
COPY features/ features/
COPY transforms/ transforms/
COPY layouts/ layouts/
COPY pipeline/ pipeline/
COPY models/ models/
COPY training/ training/
COPY evaluation/ evaluation/
COPY serving/ serving/
COPY simulation/ simulation/
COPY benchmarks/ benchmarks/
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 1000 trainer
USER 1000
ENTRYPOINT ["python", "-m", "pipeline.train"]
CMD ["--help"]
