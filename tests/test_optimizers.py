"""Tests of training.optimizers.LazyAdam: Adam on dense gradients, row-only on sparse."""

import numpy as np
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from training import optimizers
from training import trainer

BETA_1, BETA_2, EPSILON, LEARNING_RATE = 0.9, 0.999, 1e-7, 0.01


def _slots(optimizer, variable):
  """(m, v) numpy arrays of `variable` in a built tf_keras optimizer."""
  index = optimizer._index_dict[optimizer._var_key(variable)]  # pylint: disable=protected-access
  return (optimizer._momentums[index].numpy(),  # pylint: disable=protected-access
          optimizer._velocities[index].numpy())  # pylint: disable=protected-access


def test_dense_gradients_get_exactly_adams_steps():
  initial = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  lazy_var, adam_var = tf.Variable(initial), tf.Variable(initial)
  lazy = optimizers.LazyAdam(learning_rate=LEARNING_RATE)
  adam = tf_keras.optimizers.Adam(learning_rate=LEARNING_RATE)
  for step in range(5):
    gradient = tf.constant(np.random.default_rng(step + 1).normal(size=(4, 3)), tf.float32)
    lazy.apply_gradients([(gradient, lazy_var)])
    adam.apply_gradients([(gradient, adam_var)])
    np.testing.assert_allclose(lazy_var.numpy(), adam_var.numpy(), rtol=1e-6, atol=1e-7)
  assert not np.allclose(lazy_var.numpy(), initial)
  for lazy_slot, adam_slot in zip(_slots(lazy, lazy_var), _slots(adam, adam_var)):
    np.testing.assert_allclose(lazy_slot, adam_slot, rtol=1e-6)


def _embedding_gradient(table, ids, upstream):
  """IndexedSlices gradient of sum(upstream * gather(table, ids)): values [n, dim]."""
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(upstream * tf.gather(table, ids))
  gradient = tape.gradient(loss, table)
  assert isinstance(gradient, tf.IndexedSlices)
  return gradient


def test_sparse_gradients_update_only_the_batch_rows_with_summed_duplicates():
  rows, dim = 10, 3
  initial = np.random.default_rng(1).normal(size=(rows, dim)).astype(np.float32)
  table = tf.Variable(initial)
  optimizer = optimizers.LazyAdam(learning_rate=LEARNING_RATE)
  expected = initial.astype(np.float64)
  m = np.zeros_like(expected)
  v = np.zeros_like(expected)
  batches = [np.array([2, 5, 2, 7]), np.array([5, 1, 1, 1]), np.array([7, 2])]
  # The hyperparameters as the float32 variable sees them (1 - beta_2 differs from
  # 0.001 by 1e-5 relative in float32); the arithmetic below is float64.
  beta_1, beta_2, epsilon = (float(np.float32(x)) for x in (BETA_1, BETA_2, EPSILON))
  for step, ids in enumerate(batches, start=1):
    upstream = np.random.default_rng(10 + step).normal(size=(ids.size, dim))
    table_before = table.numpy()
    slots_before = _slots(optimizer, table) if step > 1 else (0 * m, 0 * v)
    optimizer.apply_gradients(
        [(_embedding_gradient(table, ids, tf.constant(upstream, tf.float32)), table)])
    # By hand: a duplicate id's gradient is the sum of its rows of `upstream`.
    gradient = np.zeros_like(expected)
    np.add.at(gradient, ids, upstream.astype(np.float32).astype(np.float64))
    touched = np.unique(ids)
    m[touched] = beta_1 * m[touched] + (1 - beta_1) * gradient[touched]
    v[touched] = beta_2 * v[touched] + (1 - beta_2) * gradient[touched] ** 2
    alpha = LEARNING_RATE * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    expected[touched] -= alpha * m[touched] / (np.sqrt(v[touched]) + epsilon)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    m_slot, v_slot = _slots(optimizer, table)
    np.testing.assert_allclose(m_slot, m, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(v_slot, v, rtol=1e-5, atol=1e-12)
    # Rows absent from this batch: bit-identical table rows and moments.
    absent = np.setdiff1d(np.arange(rows), touched)
    np.testing.assert_array_equal(table.numpy()[absent], table_before[absent])
    for slot, before in zip((m_slot, v_slot), slots_before):
      np.testing.assert_array_equal(slot[absent], before[absent])

  never_seen = [0, 3, 4, 6, 8, 9]
  np.testing.assert_array_equal(table.numpy()[never_seen], initial[never_seen])
  m_slot, v_slot = _slots(optimizer, table)
  assert not m_slot[never_seen].any() and not v_slot[never_seen].any()


def test_sparse_step_differs_from_adam_only_off_the_batch():
  """Adam moves an absent row by its decayed momentum; LazyAdam leaves it alone."""
  initial = np.ones((4, 2), np.float32)
  lazy_table, adam_table = tf.Variable(initial), tf.Variable(initial)
  lazy = optimizers.LazyAdam(learning_rate=LEARNING_RATE)
  adam = tf_keras.optimizers.Adam(learning_rate=LEARNING_RATE)
  for ids in (np.array([0, 1]), np.array([0])):
    upstream = tf.ones([ids.size, 2])
    lazy.apply_gradients([(_embedding_gradient(lazy_table, ids, upstream), lazy_table)])
    adam.apply_gradients([(_embedding_gradient(adam_table, ids, upstream), adam_table)])
  np.testing.assert_allclose(lazy_table.numpy()[0], adam_table.numpy()[0], rtol=1e-6)
  assert not np.allclose(adam_table.numpy()[1], lazy_table.numpy()[1])  # Adam moved it


def test_config_round_trip():
  optimizer = optimizers.LazyAdam(learning_rate=0.003, beta_1=0.8, beta_2=0.99,
                                  epsilon=1e-6, amsgrad=True, adaptive_epsilon=True)
  config = optimizer.get_config()
  assert config["name"] == "LazyAdam" and config["adaptive_epsilon"]
  clone = optimizers.LazyAdam.from_config(config)
  assert clone.get_config() == config
  restored = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(optimizer))
  assert isinstance(restored, optimizers.LazyAdam)
  assert restored.get_config() == config


def test_make_optimizer_builds_lazy_adam():
  train_config = config_lib.TrainConfig(optimizer="lazy_adam", learning_rate=0.002)
  optimizer = trainer.make_optimizer(train_config)
  assert isinstance(optimizer, optimizers.LazyAdam)
  np.testing.assert_allclose(float(optimizer.learning_rate), 0.002)


def test_adam_epsilon_sets_the_step_of_a_small_gradient():
  # Keras' Adam adds epsilon to sqrt(v) before the bias correction, so its first step is
  # lr * g * c / (c * |g| + eps) with c = sqrt(1 - beta_2): with the Keras epsilon a
  # gradient of 1e-6 moves a weight by a quarter of lr, with eps = 1e-4 by ~lr/3000.
  c = np.sqrt(1 - 0.999)
  for epsilon in (1e-7, 1e-4):
    expected = 0.01 * 1e-6 * c / (c * 1e-6 + epsilon)
    for name in ("adam", "lazy_adam"):
      optimizer = trainer.make_optimizer(config_lib.TrainConfig(
          optimizer=name, learning_rate=0.01, adam_epsilon=epsilon))
      assert optimizer.get_config()["epsilon"] == epsilon
      weight = tf.Variable([0.0])
      optimizer.apply_gradients([(tf.constant([1e-6]), weight)])
      np.testing.assert_allclose(-weight.numpy()[0], expected, rtol=1e-3)


class _RecordingLazyAdam(optimizers.LazyAdam):
  """LazyAdam that records, at trace time, which gradients took the sparse path."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.sparse_variables = set()

  def update_step(self, gradient, variable):
    if isinstance(gradient, tf.IndexedSlices):
      self.sparse_variables.add(variable.name)
    return super().update_step(gradient, variable)


def test_embedding_model_trains_under_mirrored_strategy():
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 50, size=(512, 2))
  labels = (ids[:, :1] % 2).astype(np.float32)  # learnable from the first id alone
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.Embedding(50, 4, input_length=2),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(1, activation="sigmoid"),
    ])
    optimizer = _RecordingLazyAdam(learning_rate=0.05)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
  history = model.fit(ids, labels, batch_size=64, epochs=4, verbose=0)
  losses = history.history["loss"]
  assert losses[-1] < 0.5 * losses[0], losses
  assert [name.split("/")[-2:] for name in optimizer.sparse_variables] == [
      ["embedding", "embeddings:0"]]  # the table took the row-only path
