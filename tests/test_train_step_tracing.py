"""models.multitask.MultiTaskModel traces its train step once per fit.

tf_keras' optimizers create their slot variables inside the first apply_gradients; left
to that, the first call of the train function creates variables and tf.function traces
train_step a second time. MultiTaskModel.make_train_function builds the slots first. The
oracle for "the same update" is a second model with the same weights stepped by the
optimizer built lazily (tf_keras' default, the base class's make_train_function).
"""

import numpy as np

from models import multitask
from tests.test_esmm import build, make_dataset, randomize
from training import optimizers


def test_fit_traces_the_step_once_and_updates_as_the_lazy_build(tmp_path):
  optimizer = lambda: optimizers.LazyAdam(0.01)  # Adam's slots, plus the sparse update
  data = make_dataset(64, batch_size=16, seed=1)
  eager = build("esmm", tmp_path / "eager")
  randomize(eager, seed=2)
  eager.compile(optimizer())
  eager.fit(data, epochs=1, verbose=0)
  assert eager.train_function.experimental_get_tracing_count() == 1

  lazy = build("esmm", tmp_path / "lazy")
  randomize(lazy, seed=2)
  lazy.compile(optimizer())
  # The base class's make_train_function: slots made inside the first trace.
  lazy.make_train_function = lambda force=False: super(
      multitask.MultiTaskModel, lazy).make_train_function(force)
  lazy.fit(data, epochs=1, verbose=0)
  assert lazy.train_function.experimental_get_tracing_count() == 2
  for mine, theirs in zip(eager.trainable_variables, lazy.trainable_variables):
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=mine.name)
