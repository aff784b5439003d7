"""Entry points (init, simulate, preprocess, train, evaluate, predict, demo, daily) and what
they share.

Importing this package prepares the process before any entry point imports TensorFlow
(pipeline/cli.py, `prepare_process`): Keras 2 (tf_keras) for TFRS, the working directory
off sys.path, TensorFlow's C++ start-up lines and google.api_core's FutureWarning off
unless --verbose.
"""
from pipeline import cli as _cli

_cli.prepare_process()
