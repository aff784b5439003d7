"""Tests of MultiTaskModel.initialize_output_biases: output layers start at label rates."""

import numpy as np
import pytest

from tests.test_model_zoo import build_zoo, make_labelled_batch

COUNTS = {"click": 450, "micro": 130, "action": 54, "purchase": 32}
EXAMPLES = 10_000


def _zero_kernel(model, layer_name):
  dense = model.output_dense(layer_name)
  dense.kernel.assign(np.zeros(dense.kernel.shape, np.float32))


@pytest.mark.parametrize("name,expected", [
    ("esmm", {"ctr": 450 / 10_000, "cvr": 32 / 450}),
    ("naive", {"ctr": 450 / 10_000, "cvr": 32 / 450}),
    ("esmg", {"ctr": 450 / 10_000, "p_action_given_click": 54 / 450, "cvr": 32 / 450}),
    ("aitm", {"ctr": 450 / 10_000, "ctcvr": 32 / 10_000}),
])
def test_outputs_start_at_the_label_rates(name, expected, tmp_path):
  model = build_zoo(name, tmp_path)
  rates = model.initialize_output_biases(COUNTS, EXAMPLES)
  assert len(rates) == len(model.output_priors)
  for prior in model.output_priors:
    _zero_kernel(model, prior.layer)
  features, _ = make_labelled_batch(16, seed=1)
  outputs = {k: v.numpy() for k, v in model(features).items()}
  for output, rate in expected.items():
    np.testing.assert_allclose(outputs[output], rate, rtol=1e-5, err_msg=output)


def test_missing_labels_are_skipped_and_rates_are_capped(tmp_path):
  model = build_zoo("esmm", tmp_path)
  assert model.initialize_output_biases({"click": 9_000}, EXAMPLES) == {"ctr_tower": 0.5}
  before = model.scorer.get_layer("cvr_tower").logit.bias.numpy().copy()
  assert model.initialize_output_biases({}, EXAMPLES) == {}
  np.testing.assert_array_equal(model.scorer.get_layer("cvr_tower").logit.bias.numpy(), before)
