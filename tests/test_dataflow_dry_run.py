"""Every pipeline.preprocess job translates for Dataflow, offline (issue 30).

Where it sits: pipeline.preprocess builds one Beam job per --source (transforms/job.py)
and runs it on the runner its Beam options name. This module builds each job from the
command line a user types for Dataflow (docs/SCALING.md 2.4: `--runner DataflowRunner
--project --region --temp_location gs://... --setup_file ./setup.py`, --output on gs://)
plus Beam's `--dry_run=True` (TestOptions). DataflowRunner then does everything it does
before it calls the service and returns the job it would submit: no network, no
credentials (the API client is never made), nothing uploaded (the artifacts are built
in a local temporary directory, removed here), nothing written to the gs:// paths, and
no input record read (the input files only have to exist: pipeline.preprocess matches
the globs before it builds the job).

What the dry run checks (apache_beam 2.61.0: pipeline.py `Pipeline.run`,
runners/dataflow/dataflow_runner.py `run_pipeline`, internal/apiclient.py `Job`):
  * Dataflow's options when the pipeline is made: project id form, region, job name
    form; the gs:// temp_location (the staging location defaults to it) is only
    recorded, but it must be given: without one, or with a local path, Beam's option
    validation asks GCS for a default bucket (offline: a 120 s retry, then an error);
  * the round trip of the whole pipeline through the Runner API that DataflowRunner (not
    the DirectRunner) makes: every transform pickled and rebuilt in this process;
  * the translation to the portable pipeline proto: every DoFn and CombineFn pickled,
    every GroupByKey input a KV with a deterministic key coder, side inputs in a form
    Dataflow reads, combiner packing, the graph's GroupByKey coders (`validate_pipeline_graph`);
  * the workers' environment: Dataflow's SDK container for this Python and Beam, and the
    sdist `--setup_file` builds (`setup.py sdist`, offline) that workers pip-install.
This module adds what the job must be for Dataflow to run it as we mean: a batch job
(an unbounded step would turn it into a streaming job that never ends), only primitives
Dataflow's Runner v2 executes, our composites by name under one root, and every project
module the job's transforms come from inside that sdist (else workers fail to unpickle
them: ModuleNotFoundError).
What it cannot check: anything that happens when a DoFn runs (setup, a bad record, an
exception, memory), the workers' start-up (pip-installing setup.py's pins, the image
pull), the service's own checks (job graph size, quotas, permissions, the gs:// paths),
and the input globs on gs:// (matched with the user's credentials before the job is
built; here they are local files). The DirectRunner tests run the same transforms.

Each job is one entry in JOBS: (name, a function of a temporary directory that writes
the inputs and returns the job's flags without --output and the Dataflow options, the
step names its root composite must have); "daily" is the incremental job (`--day`,
after a previous day).
"""

import functools
import json
import os
import shutil
import sys
import tarfile
import tempfile
import types
from typing import Callable, List, Sequence, Set, Tuple

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.portability import stager as stager_lib
import pytest

from features import success_marker
from pipeline import preprocess
from tests import beam_testing as testing
from tests.test_aliccp import write_release

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "tests", "data", "real")
ALIEXPRESS = os.path.join(REPO, "tests", "data", "aliexpress", "AliExpress_XX")
BUCKET = "gs://cvr-pipeline-ci"
# As docs/SCALING.md 2.4's command (run from the repository: ./setup.py), plus the dry run.
DATAFLOW_FLAGS = ["--runner", "DataflowRunner", "--project", "cvr-pipeline-ci",
                  "--region", "europe-west1", "--temp_location", f"{BUCKET}/tmp",
                  "--setup_file", os.path.join(REPO, "setup.py"), "--dry_run=True"]
# Every leaf of a translated job is one of these (Dataflow Runner v2's primitives);
# e.g. TestStream is not.
DATAFLOW_PRIMITIVES = {common_urns.primitives.IMPULSE.urn, common_urns.primitives.PAR_DO.urn,
                       common_urns.primitives.GROUP_BY_KEY.urn,
                       common_urns.primitives.FLATTEN.urn,
                       common_urns.primitives.ASSIGN_WINDOWS.urn}
WORKFLOW_TARBALL = "workflow.tar.gz"  # the staged name of the --setup_file sdist
# The steps of transforms/job.py's write_outputs, which every source ends with.
WRITE_STEPS = ("Encode_train", "Encode_eval", "Write_train", "Write_eval", "Statistics_train",
               "Statistics_eval", "AnalyzeTransforms", "WriteTransformArtifacts",
               "WriteDeadLetters", "WriteCounts")


def log_flags(directory: str) -> List[str]:
  """--source log: a few raw impressions (JSONL.gz and Parquet) and events of one day."""
  impressions = [testing.impression(index, testing.START + index) for index in range(4)]
  events = [testing.event("imp0", testing.START + 5, "click"),
            testing.event("imp0", testing.START + 9, "purchase")]
  testing.write_jsonl(os.path.join(directory, "impressions-0.jsonl.gz"), impressions[:2])
  testing.write_parquet(os.path.join(directory, "impressions-1.parquet"), impressions[2:])
  testing.write_jsonl(os.path.join(directory, "events.jsonl"), events)
  return ["--impressions", os.path.join(directory, "impressions-*"),
          "--events", os.path.join(directory, "events.jsonl")]


def ali_ccp_flags(directory: str) -> List[str]:
  """--source ali_ccp: tests/test_aliccp.py's small release files."""
  paths = write_release(directory)
  return ["--source", "ali_ccp", "--skeleton", paths["sample_skeleton_train"],
          "--common_features", paths["common_features_train"],
          "--eval_skeleton", paths["sample_skeleton_test"],
          "--eval_common_features", paths["common_features_test"]]


def daily_flags(directory: str) -> List[str]:
  """--day: log_flags' files as one day's, after a previous day whose output holds only
  what the job reads before it runs (day.json and a success marker; its state files are
  matched on the workers)."""
  previous = os.path.join(directory, "previous")
  os.makedirs(previous)
  with open(os.path.join(previous, "day.json"), "w") as f:
    json.dump({"day": "2025-12-31", "as_of": testing.START - 1, "analyzer_states": []}, f)
  success_marker.write_success_marker(previous, {})
  return log_flags(directory) + ["--day", "2026-01-01", "--previous", previous]


def derived_flags(source: str, train: str, evals: Sequence[str]) -> Callable[[str], List[str]]:
  """The flags of a derived layout read from files the repository ships."""
  return lambda directory: ["--source", source, "--train", train, "--eval", ",".join(evals)]


# (name, inputs -> flags, steps of the root composite). The default config of each source.
JOBS = [
    ("log", log_flags, ("ReadParseImpressions", "ReadParseEvents", "JoinAndLabel",
                        "SplitByTime", "WriteSplitDates") + WRITE_STEPS),
    ("daily", daily_flags, ("ReadParseImpressions", "ReadParseEvents", "ReadStateImpressions",
                            "ReadStateEvents", "CoGroup", "Label", "WriteState_impressions",
                            "WriteState_events", "Encode_train", "Write_train",
                            "Statistics_train", "Write_updates", "Write_closed",
                            "AnalyzerState", "WriteAnalyzerState", "WriteDeadLetters",
                            "WriteCounts")),
    ("ali_ccp", ali_ccp_flags, ("ReadParse_skeleton_train", "ReadParse_common_train",
                                "ReadParse_skeleton_eval", "ReadParse_common_eval",
                                "JoinCommonFeatures") + WRITE_STEPS),
    ("rechub_csv", derived_flags("rechub_csv", os.path.join(REAL, "rechub_aliccp_train.csv"),
                                 [os.path.join(REAL, "rechub_aliccp_val.csv"),
                                  os.path.join(REAL, "rechub_aliccp_test.csv")]),
     ("Read_train", "Read_eval") + WRITE_STEPS),
    ("paddle_esmm", derived_flags("paddle_esmm", os.path.join(REAL, "paddle_esmm_train.txt"),
                                  [os.path.join(REAL, "paddle_esmm_test.txt")]),
     ("Read_train", "Read_eval") + WRITE_STEPS),
    ("aliexpress", derived_flags("aliexpress", os.path.join(ALIEXPRESS, "train.csv"),
                                 [os.path.join(ALIEXPRESS, "test.csv")]),
     ("Read_train", "Read_eval") + WRITE_STEPS),
]


def build_pipeline(argv: Sequence[str]) -> beam.Pipeline:
  """The beam.Pipeline `pipeline.preprocess.run(argv)` runs (`preprocess.build_pipeline`:
  every check made, nothing written), not run."""
  return preprocess.build_pipeline(argv).pipeline


def dry_run(pipeline: beam.Pipeline) -> Tuple[apiclient.Job, Set[str]]:
  """Runs `pipeline` (DataflowRunner, --dry_run=True).

  Returns:
    (the job it would submit, the modules of the sdist `--setup_file` built), after
    removing the local directory Beam built the staged artifacts in.
  """
  result = pipeline.run()
  assert result.state == beam.runners.runner.PipelineState.DONE
  job = result.job
  files = staged_files(job)
  assert WORKFLOW_TARBALL in files, sorted(files)
  modules = sdist_modules(files[WORKFLOW_TARBALL])
  for path in files.values():
    if os.path.dirname(path).startswith(tempfile.gettempdir()):
      shutil.rmtree(os.path.dirname(path), ignore_errors=True)
  return job, modules


def staged_files(job: apiclient.Job) -> dict:
  """Staged name -> the local file Beam built (the workers' environment's artifacts)."""
  files = {}
  for environment in job.proto_pipeline.components.environments.values():
    for artifact in environment.dependencies:
      name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
          artifact.role_payload).staged_name
      files[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(
          artifact.type_payload).path
  return files


def leaves(components, transform_id: str) -> List[str]:
  """The primitive transforms (ids) under `transform_id`."""
  transform = components.transforms[transform_id]
  if not transform.subtransforms:
    return [transform_id]
  return [leaf for sub in transform.subtransforms for leaf in leaves(components, sub)]


def defining_modules(obj) -> Set[str]:
  """The modules a pickled reference to `obj` names: its class's, and its own for a
  function or class (through a bound method or a functools.partial)."""
  names = {type(obj).__module__}
  if isinstance(obj, (type, types.FunctionType)):
    names.add(obj.__module__)
  elif isinstance(obj, types.MethodType):
    names |= defining_modules(obj.__self__)
  elif isinstance(obj, functools.partial):
    names |= defining_modules(obj.func)
  return names


def project_modules(pipeline: beam.Pipeline) -> Set[str]:
  """Our modules (packages under REPO, tests/ excepted) that the job's transforms, DoFns,
  CombineFns and mapped functions come from: what a worker imports to unpickle them."""
  found = set()

  class Visitor(beam.pipeline.PipelineVisitor):

    def enter_composite_transform(self, transform_node):
      self.visit_transform(transform_node)

    def visit_transform(self, transform_node):
      transform = transform_node.transform
      fn = getattr(transform, "fn", None)  # a ParDo's DoFn, a Combine's CombineFn
      for obj in (transform, fn, getattr(fn, "_fn", None)):  # _fn: Map's, CombineGlobally's
        found.update(defining_modules(obj))

  pipeline.visit(Visitor())
  return {name for name in found if name.split(".")[0] != "tests"
          and os.path.isdir(os.path.join(REPO, name.split(".")[0]))}


def sdist_modules(path: str) -> Set[str]:
  """The module names a `setup.py sdist` tarball holds (`pkg/mod.py` -> pkg.mod)."""
  with tarfile.open(path) as tar:
    names = [member.name.split("/", 1)[1] for member in tar.getmembers()
             if member.name.endswith(".py") and "/" in member.name]
  return {name[:-3].replace("/", ".").removesuffix(".__init__") for name in names}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A folder for the jobs' input files. Module-scoped, so that under `--dist loadscope`
  (make test) this file is one work unit on one worker: the first dry run builds the sdist
  in the repository's folder (`setup.py sdist` makes and removes a release tree there), and
  two at once would race."""
  return tmp_path_factory.mktemp("dataflow_dry_run")


@pytest.fixture(scope="module", autouse=True)
def staged_once(tmp_path_factory):
  """The workers' environment artifacts that do not depend on the job (the `--setup_file`
  sdist, the submission environment's `pip freeze`), built by Beam's own Stager for the
  first dry run and copied into each later run's staging directory (about 1.2 CPU s a
  job: two child processes). Each job still stages them and is checked on them."""
  cache = str(tmp_path_factory.mktemp("staged_once"))
  stager = stager_lib.Stager
  build = stager._build_setup_package  # pylint: disable=protected-access
  freeze = stager._create_stage_submission_env_dependencies  # pylint: disable=protected-access
  built = {}

  def build_once(setup_file, temp_dir, build_setup_args=None):
    if setup_file not in built:
      os.makedirs(os.path.join(cache, "sdist"))
      built[setup_file] = build(setup_file, os.path.join(cache, "sdist"), build_setup_args)
    return shutil.copy(built[setup_file], temp_dir)

  def freeze_once(temp_dir):
    if "freeze" not in built:
      [artifact] = freeze(cache)
      built["freeze"] = beam_runner_api_pb2.ArtifactFilePayload.FromString(
          artifact.type_payload).path
    path = shutil.copy(built["freeze"], temp_dir)
    return [stager_lib.Stager._create_file_stage_to_artifact(  # pylint: disable=protected-access
        path, stager_lib.SUBMISSION_ENV_DEPENDENCIES_FILE)]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(stager_lib.Stager, "_build_setup_package", staticmethod(build_once))
    patch.setattr(stager_lib.Stager, "_create_stage_submission_env_dependencies",
                  staticmethod(freeze_once))
    yield


@pytest.mark.parametrize("name,flags,steps", JOBS, ids=[job[0] for job in JOBS])
def test_the_job_translates_for_dataflow_offline(name, flags, steps, inputs):
  directory = inputs / name
  directory.mkdir()
  # A job name of our own, as the scheduled command gives one (Beam's default asks
  # getpass.getuser(), which fails for a uid without a passwd entry, e.g. in a container).
  job_name = f"cvr-preprocess-{name.replace('_', '-')}"
  argv = flags(str(directory)) + ["--output", f"{BUCKET}/runs/{name}",
                                  "--job_name", job_name] + DATAFLOW_FLAGS
  pipeline = build_pipeline(argv)
  job, shipped = dry_run(pipeline)

  assert job.proto.type == job.proto.TypeValueValuesEnum.JOB_TYPE_BATCH, (
      f"{name}: a {job.proto.type} job (an unbounded step?); Dataflow would never end it")
  options = job.options.view_as(pipeline_options.GoogleCloudOptions)
  assert job.proto.name == job_name
  assert options.temp_location.startswith(f"{BUCKET}/tmp/{job_name}.")  # only recorded
  components = job.proto_pipeline.components
  top, = job.proto_pipeline.root_transform_ids  # the pipeline's, holding the job's root
  root, = components.transforms[top].subtransforms
  root_name = components.transforms[root].unique_name
  by_name = {transform.unique_name: transform_id
             for transform_id, transform in components.transforms.items()}
  missing = [step for step in steps if f"{root_name}/{step}" not in by_name]
  assert not missing, f"{name}: no step {missing} under {root_name}"
  urns = {components.transforms[leaf].spec.urn for leaf in leaves(components, root)}
  assert urns <= DATAFLOW_PRIMITIVES, (
      f"{name}: steps Dataflow cannot run: {urns - DATAFLOW_PRIMITIVES}")

  environment, = components.environments.values()
  assert environment.urn == common_urns.environments.DOCKER.urn
  image = beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
  python = f"{sys.version_info.major}.{sys.version_info.minor}"
  assert image.endswith(f"/beam_python{python}_sdk:{beam.__version__}"), image
  used = project_modules(pipeline)
  assert used and used <= shipped, f"{name}: modules setup.py does not ship: {used - shipped}"



def test_dry_run_is_refused_with_a_runner_that_would_run_the_job():
  """Only DataflowRunner honours --dry_run; pipeline.preprocess refuses it elsewhere
  instead of running the job and skipping its checks."""
  options = pipeline_options.PipelineOptions
  assert preprocess.is_dry_run(options(["--runner", "DataflowRunner", "--dry_run=True"]))
  assert not preprocess.is_dry_run(options(["--runner", "DataflowRunner"]))
  with pytest.raises(preprocess.errors.PreprocessError, match="--dry_run is DataflowRunner's"):
    preprocess.is_dry_run(options(["--dry_run=True"]))
