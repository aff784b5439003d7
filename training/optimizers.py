"""Optimizers beyond tf_keras' own: a lazy (sparse) Adam for embedding tables.

Flow position: `training.trainer.make_optimizer` builds one from `train.optimizer`
(`lazy_adam`) and the model's `compile` uses it. tf_keras' Adam, given the
`tf.IndexedSlices` gradient of an embedding table, decays the table's whole first and
second moments every step (dense work proportional to the table, not the batch);
`LazyAdam` touches only the rows the batch looked up.
"""

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class LazyAdam(tf_keras.optimizers.Adam):
  r"""Adam that updates only the rows of a sparse gradient (lazy / sparse Adam).

  Dense gradients (towers, biases) get tf_keras' Adam update unchanged. For a
  `tf.IndexedSlices` gradient of a variable [rows, ...] (an embedding table read with
  `tf.gather`), with t = iterations + 1, step (t):

    I = the unique indices of the gradient; g_i = the sum of the gradient values
        with index i (duplicate indices are summed, as a dense gradient would be)
    for i in I only:
      m_i <- beta_1 * m_i + (1 - beta_1) * g_i
      v_i <- beta_2 * v_i + (1 - beta_2) * g_i^2
      (amsgrad: vhat_i <- max(vhat_i, v_i), used in place of v_i)
      w_i <- w_i - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m_i / (sqrt(v_i) + eps)

  The difference from Adam: Adam also decays m and v of the rows *not* in the batch
  (m_j <- beta_1 * m_j, v_j <- beta_2 * v_j) and moves those rows by their decayed
  momentum. Here rows absent from a batch keep their moments and are not moved, so a
  step costs O(rows in the batch) instead of O(rows in the table). The bias
  correction still uses the global step t, as in TF Addons' LazyAdam. On a dense
  gradient, or when every row is in every batch, the two are identical.

  Args: those of `tf_keras.optimizers.Adam`; `adaptive_epsilon` is also serialised.
  """

  def __init__(self, learning_rate=0.001, name="LazyAdam", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)

  def update_step(self, gradient, variable):
    """Applies one step to `variable` [rows, ...].

    Args:
      gradient: a dense Tensor [rows, ...] (Adam's update), or tf.IndexedSlices with
        indices int [n] (repeats allowed) and values [n, ...] (the lazy update).
      variable: the model variable; its m and v slots have its shape.
    """
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    lr = tf.cast(self.learning_rate, dtype)
    local_step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    beta_1_power = tf.pow(beta_1, local_step)
    beta_2_power = tf.pow(beta_2, local_step)
    alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    if self.adaptive_epsilon:
      epsilon_hat = self.epsilon * tf.sqrt(1 - beta_2_power)
    else:
      epsilon_hat = tf.cast(self.epsilon, dtype)

    # Unique rows [n] and their summed gradients [n, ...] (see _deduplicate_sparse_grad).
    indices, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(indices)[0])

    var_key = self._var_key(variable)
    m = self._momentums[self._index_dict[var_key]]
    v = self._velocities[self._index_dict[var_key]]
    m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, indices))
    v.scatter_update(tf.IndexedSlices(v_rows, indices))
    if self.amsgrad:
      v_hat = self._velocity_hats[self._index_dict[var_key]]
      v_rows = tf.maximum(tf.gather(v_hat, indices), v_rows)
      v_hat.scatter_update(tf.IndexedSlices(v_rows, indices))
    variable.scatter_sub(
        tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon_hat), indices))

  def _deduplicate_sparse_grad(self, grads):
    """Returns `grads` as they are: update_step de-duplicates sparse gradients itself.

    tf_keras' apply_gradients calls this before update_step (after clipping, as here);
    doing it once, in update_step, saves a tf.unique per table and step and keeps a
    direct update_step call correct.
    """
    return grads

  def get_config(self):
    config = super().get_config()
    config.update(adaptive_epsilon=self.adaptive_epsilon)
    return config
