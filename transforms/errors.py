"""The preprocessing job's errors, without Beam or TensorFlow: transforms.job raises them
after a run, pipeline.preprocess before it (flag checks), pipeline/cli.py prints one line."""


class PreprocessError(RuntimeError):
  """The job cannot run or its output fails a check; the message says which and why."""


class AccountingError(PreprocessError):
  """Some input records are neither written nor dead-lettered (or counted twice)."""


class AnomaliesError(PreprocessError):
  """The statistics do not match the given schema (with --fail_on_anomalies)."""
