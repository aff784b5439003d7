"""Tests of models.esm2: the decomposition cvr = y2*y3 + (1-y2)*y4 and its losses."""

import numpy as np

from tests.test_esmm import randomize, tower_gradients
from tests.test_model_zoo import build_zoo, make_labelled_batch, outputs_of


def test_cvr_is_the_mixture_over_the_action_branch(tmp_path):
  model = build_zoo("esm2", tmp_path)
  randomize(model, seed=1)
  o = outputs_of(model, make_labelled_batch(300, seed=2)[0])
  y1, y2 = o["ctr"], o["p_action_given_click"]
  y3, y4 = o["p_purchase_given_action"], o["p_purchase_given_no_action"]
  np.testing.assert_allclose(o["cvr"], y2 * y3 + (1 - y2) * y4, rtol=1e-6)
  np.testing.assert_array_equal(o["ctavr"], y1 * y2)
  np.testing.assert_array_equal(o["ctcvr"], y1 * o["cvr"])
  assert np.all(o["cvr"] >= np.minimum(y3, y4) - 1e-7)
  assert np.all(o["cvr"] <= np.maximum(y3, y4) + 1e-7)


def test_losses_and_labels(tmp_path):
  model = build_zoo("esm2", tmp_path, loss_weights={"ctavr": 0.5})
  assert model.task_loss_weights == {"ctr": 1.0, "ctcvr": 1.0, "cvr": 0.0, "ctavr": 0.5}
  assert model.required_labels == {"click", "action", "purchase"}
  batch = make_labelled_batch(128, seed=3)
  losses = model.task_losses(batch)
  expected = losses["ctr"] + losses["ctcvr"] + 0.5 * losses["ctavr"]
  np.testing.assert_allclose(model.compute_loss(batch).numpy(), expected.numpy(), rtol=1e-6)
  # ctavr's target is click * action over all exposures
  features, labels = batch
  ctavr = model(features)["ctavr"].numpy()[:, 0]
  target = (labels["click"] * labels["action"]).numpy()
  manual = -np.mean(target * np.log(ctavr) + (1 - target) * np.log(1 - ctavr))
  np.testing.assert_allclose(losses["ctavr"].numpy(), manual, rtol=1e-4)


# tower -> the loss tasks whose probability reads its logit (docs/MODELS.md, ESM2)
TOWER_TASKS = {
    "ctr_tower": ("ctr", "ctavr", "ctcvr"),
    "action_tower": ("ctavr", "ctcvr"),
    "purchase_given_action_tower": ("ctcvr",),
    "purchase_given_no_action_tower": ("ctcvr",),
}
WEIGHTS = {"ctavr": 0.5, "ctcvr": 2.0}


def test_each_tower_gets_the_weighted_sum_of_the_gradients_of_its_tasks(tmp_path):
  model = build_zoo("esm2", tmp_path, loss_weights=WEIGHTS)
  batch = make_labelled_batch(128, seed=4)
  for tower, tasks in TOWER_TASKS.items():
    grads = tower_gradients(model, batch, tower)
    others = [t for t in ("ctr", "ctavr", "ctcvr") if t not in tasks]
    assert all(g is None for t in others for g in grads[t]), tower
    assert all(np.any(g.numpy() != 0) for t in tasks for g in grads[t]), tower
    for i, total in enumerate(grads["total"]):
      expected = sum(WEIGHTS.get(t, 1.0) * grads[t][i].numpy() for t in tasks)
      np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5, atol=1e-7,
                                 err_msg=f"{tower} variable {i}")
  # y3 and y4 learn only through ctcvr; the metrics-only cvr task would change that.
  grads = tower_gradients(model, batch, "purchase_given_no_action_tower")
  assert any(not np.allclose(t.numpy(), 2.0 * c.numpy() + m.numpy(), atol=1e-7)
             for t, c, m in zip(grads["total"], grads["ctcvr"], grads["cvr"]))
