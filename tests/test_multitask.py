"""Tests of models.multitask's logged loss (SetLoss): `val_loss` is the validation set's loss.

The oracle is numpy in float64 over the whole set at once: each task's
sum_i s_i * BCE(y_i, z_i) / sum_i s_i from the model's log-odds z (BCE = softplus(z) -
y z), combined with the task loss weights, plus the regularization loss. The set is
fed in two batches with very different click rates, where averaging the batches'
click-normalised losses by exposures (the old tracker) gives another number.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tests.test_esmm import build, make_batch, randomize
from tests.test_model_zoo import build_zoo, make_labelled_batch

# name -> (builder, batch maker): click-weighted cvr tasks (naive, shared_bottom) and an
# action-weighted one with a parameter tie (ESMC's purchase_given_action).
MODELS = {"naive": (build, make_batch), "shared_bottom": (build, make_batch),
          "esmc": (build_zoo, make_labelled_batch)}


def _uneven_batches(make, n=400, first=100, seed=4):
  """(the whole set, [batch 1, batch 2]): batch 1 the first `first` exposures clicked
  and not bought, batch 2 the rest (few clicks, most of them bought), so the two
  batches' cvr losses differ as well as their click counts."""
  features, labels = make(n, seed=seed)
  click, purchase = labels["click"].numpy(), labels["purchase"].numpy()
  order = np.lexsort((purchase, -click))  # clicked first, the not bought first among them
  whole = tuple({k: tf.gather(v, order) for k, v in part.items()}
                for part in (features, labels))
  batches = [tuple({k: v[lo:hi] for k, v in part.items()} for part in whole)
             for lo, hi in ((0, first), (first, n))]
  return whole, batches


def _set_loss_oracle(model, whole):
  """float64: sum_t w_t * sum_i s_t,i BCE_t,i / sum_i s_t,i over the whole set, plus the
  regularization and constraint losses (scalars of the weights)."""
  features, labels = whole
  log_odds = {k: v.numpy()[:, 0].astype(np.float64)
              for k, v in model.log_odds(features).items()}
  total = float(model.regularization_loss().numpy() + model.constraint_loss().numpy())
  for name, spec in model.task_specs.items():
    z = log_odds[spec.output]
    y = spec.label_fn(labels).numpy().astype(np.float64)
    weight = (np.ones_like(z) if spec.weight_fn is None
              else spec.weight_fn(labels).numpy().astype(np.float64))
    bce = np.logaddexp(0.0, z) - y * z
    total += model.task_loss_weights[name] * np.sum(weight * bce) / np.sum(weight)
  return total


@pytest.mark.parametrize("name", sorted(MODELS))
def test_val_loss_is_the_weighted_mean_over_the_whole_set(name, tmp_path):
  builder, make = MODELS[name]
  model = builder(name, tmp_path, l2=0.01)
  randomize(model, seed=3)
  model.compile(tf_keras.optimizers.Adam(0.01))
  whole, batches = _uneven_batches(make)
  clicks = [float(b[1]["click"].numpy().sum()) for b in batches]
  assert clicks[0] == 100 and 0 < clicks[1] < 0.25 * 300, clicks
  validation = tf.data.Dataset.from_tensors(batches[0]).concatenate(
      tf.data.Dataset.from_tensors(batches[1]))

  expected = _set_loss_oracle(model, whole)
  per_batch = [float(model.compute_loss(b).numpy()) for b in batches]
  by_exposures = np.average(per_batch, weights=[100, 300])
  # The old logged value (batches averaged by exposures) is not the set's loss:
  assert abs(by_exposures - expected) > 5e-3 * expected
  logs = model.evaluate(validation, return_dict=True, verbose=0)
  np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)

  # What early stopping reads: fit's val_loss, on the weights the epoch ends with.
  train = tf.data.Dataset.from_tensors(batches[1])
  history = model.fit(train, validation_data=validation, epochs=1, verbose=0)
  np.testing.assert_allclose(history.history["val_loss"][0],
                             _set_loss_oracle(model, whole), rtol=1e-5)


def test_one_batch_logs_its_training_loss(tmp_path):
  """On a single batch the logged loss is compute_loss (the two definitions agree)."""
  model = build("naive", tmp_path, l2=0.01)
  randomize(model, seed=5)
  model.compile(tf_keras.optimizers.Adam(0.01))
  batch = make_batch(200, seed=6)
  logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
  np.testing.assert_allclose(logs["loss"], model.compute_loss(batch).numpy(), rtol=1e-6)
