"""models/autograph_rules.py: AutoGraph leaves tf_keras and TFRS as written, our code not.

Oracle: AutoGraph's own allow-list decision (`conversion.is_allowlisted`), in a fresh
process that only imports the `models` package (as every training process does): for a
tf_keras layer's call, a TFRS task's call and one of this project's functions.
"""

import os
import subprocess
import sys

from models import autograph_rules

_CHECK = """
import models
import tensorflow_recommenders as tfrs
import tf_keras
from tensorflow.python.autograph.impl import conversion
from models.layers import log_space
print(conversion.is_allowlisted(tf_keras.layers.Dense.call),
      conversion.is_allowlisted(tfrs.tasks.Ranking.call),
      conversion.is_allowlisted(log_space.log_add_exp))
"""


def test_importing_models_leaves_tf_keras_and_tfrs_as_written_and_converts_the_project():
  run = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                       check=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
  assert run.stdout.split() == ["True", "True", "False"], run.stderr[-2000:]


def test_the_rule_is_added_once():
  assert not autograph_rules.leave_keras_unconverted()  # models/__init__.py added it
