"""Tests of ESMM's ctcvr label (models.esmm): the target is click * purchase.

A purchase flag on an unclicked exposure is not a conversion in the entire space, so
flipping it must leave the loss unchanged; flipping it on a clicked exposure must change
the ctcvr loss by exactly the BCE difference of those rows (numpy), and never the ctr loss.
(tests/test_naive.py does the same for the naive model's cvr-on-clicks task.)
"""

import numpy as np
import tensorflow as tf

from tests.test_esmm import build, make_batch, numpy_bce, randomize


def _with_purchase(labels, purchase):
  return dict(labels, purchase=tf.constant(purchase, tf.float32))


def _losses(model, batch):
  losses = model.task_losses(batch)
  return ({name: float(value) for name, value in losses.items()},
          float(model.compute_loss(batch)))


def test_purchase_on_unclicked_exposures_does_not_change_the_loss(tmp_path):
  model = build("esmm", tmp_path)
  randomize(model, seed=1)
  features, labels = make_batch(256, seed=2)
  click = labels["click"].numpy()
  purchase = labels["purchase"].numpy()
  assert 0 < click.sum() < len(click)
  task_losses, loss = _losses(model, (features, labels))
  flipped = np.where(click == 0, 1.0 - purchase, purchase)
  assert (flipped != purchase).sum() == (click == 0).sum()
  flipped_task_losses, flipped_loss = _losses(model, (features, _with_purchase(labels, flipped)))
  assert flipped_loss == loss
  assert flipped_task_losses["ctr"] == task_losses["ctr"]
  assert flipped_task_losses["ctcvr"] == task_losses["ctcvr"]


def test_purchase_on_clicked_exposures_changes_the_ctcvr_loss_only(tmp_path):
  model = build("esmm", tmp_path)
  randomize(model, seed=1)
  features, labels = make_batch(256, seed=2)
  click = labels["click"].numpy().astype(np.float64)
  purchase = labels["purchase"].numpy().astype(np.float64)
  ctcvr = model(features)["ctcvr"].numpy()
  task_losses, loss = _losses(model, (features, labels))
  flipped = np.where(click == 1, 1.0 - purchase, purchase)
  flipped_task_losses, flipped_loss = _losses(model, (features, _with_purchase(labels, flipped)))
  assert flipped_task_losses["ctr"] == task_losses["ctr"]
  # The change is the numpy BCE difference of the flipped rows (the others cancel).
  expected_change = numpy_bce(click * flipped, ctcvr) - numpy_bce(click * purchase, ctcvr)
  assert abs(expected_change) > 1e-3
  np.testing.assert_allclose(flipped_task_losses["ctcvr"] - task_losses["ctcvr"],
                             expected_change, rtol=1e-4)
  np.testing.assert_allclose(flipped_loss - loss, expected_change, rtol=1e-4)
