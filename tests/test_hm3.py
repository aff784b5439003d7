"""Tests of models.hm3: the six sub-networks and their compositions on the micro/macro graph."""

import json

import numpy as np
import pytest

from configs import config as config_lib
from tests.test_esmm import numpy_bce, randomize
from tests.test_model_zoo import LABELS, build_zoo, make_labelled_batch, outputs_of
from training import data


def test_compositions_hold(tmp_path):
  model = build_zoo("hm3", tmp_path)
  randomize(model, seed=1)
  o = outputs_of(model, make_labelled_batch(300, seed=2)[0])
  y1, y2 = o["ctr"], o["p_micro_given_click"]
  y3, y4 = o["p_macro_given_micro"], o["p_macro_given_no_micro"]
  y5, y6 = o["p_purchase_given_macro"], o["p_purchase_given_no_macro"]
  p_macro = y2 * y3 + (1 - y2) * y4
  np.testing.assert_allclose(o["p_action_given_click"], p_macro, rtol=1e-6)
  np.testing.assert_array_equal(o["ctmicro"], y1 * y2)
  np.testing.assert_allclose(o["ctmacro"], y1 * p_macro, rtol=1e-6)
  np.testing.assert_array_equal(o["ctavr"], o["ctmacro"])
  np.testing.assert_allclose(o["cvr"], p_macro * y5 + (1 - p_macro) * y6, rtol=1e-6)
  np.testing.assert_array_equal(o["ctcvr"], y1 * o["cvr"])
  assert np.all(o["ctmicro"] <= y1) and np.all(o["ctmacro"] <= y1)


def test_four_entire_space_losses(tmp_path):
  """ctr, ctmicro, ctmacro, ctcvr: BCE over all exposures against click and its products."""
  model = build_zoo("hm3", tmp_path, loss_weights={"ctmicro": 0.5})
  assert model.task_loss_weights == {"ctr": 1.0, "ctcvr": 1.0, "cvr": 0.0, "ctmicro": 0.5,
                                     "ctmacro": 1.0}
  assert model.required_labels == {"click", "micro", "action", "purchase"}
  randomize(model, seed=5)
  features, labels = batch = make_labelled_batch(256, seed=6)
  o = outputs_of(model, features)
  click, micro, action, purchase = (labels[name].numpy().astype(np.float64)
                                    for name in ("click", "micro", "action", "purchase"))
  assert click.sum() > 0 and (click * micro).sum() > 0 and (click * action).sum() > 0
  expected = {
      "ctr": numpy_bce(click, o["ctr"]),
      "ctmicro": numpy_bce(click * micro, o["ctmicro"]),
      "ctmacro": numpy_bce(click * action, o["ctmacro"]),
      "ctcvr": numpy_bce(click * purchase, o["ctcvr"]),
  }
  losses = model.task_losses(batch)
  for name, value in expected.items():
    np.testing.assert_allclose(losses[name].numpy(), value, rtol=1e-5, err_msg=name)
  total = expected["ctr"] + 0.5 * expected["ctmicro"] + expected["ctmacro"] + expected["ctcvr"]
  assert float(model.regularization_loss()) == 0.0 and not model.parameter_ties
  np.testing.assert_allclose(model.compute_loss(batch).numpy(), total, rtol=1e-5)


def test_missing_micro_label_fails_naming_it(tmp_path):
  without_micro = [label for label in LABELS if label["name"] != "micro"]
  from models import registry  # pylint: disable=g-import-not-at-top
  from tests.test_esmm import SPEC, make_artifacts  # pylint: disable=g-import-not-at-top
  from tests.test_model_zoo import zoo_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match=r"'hm3' needs label\(s\) \['micro'\]"):
    registry.build_model(zoo_config("hm3", labels=without_micro), SPEC,
                         make_artifacts(str(tmp_path / "t")))
  # The data directory's labels.json is checked at the start of training too.
  model = build_zoo("hm3", tmp_path)
  (tmp_path / "labels.json").write_text(json.dumps(["click", "action", "purchase"]))
  with pytest.raises(ValueError, match=rf"needs label\(s\) \['micro'\].*{tmp_path}"):
    data.check_labels(str(tmp_path), sorted(model.required_labels))
