"""ESMC's tower tie (models.layers.regularizers, via MultiTaskModel) under MirroredStrategy.

The 2-replica run happens in the subprocess of tests/test_strategy.py's own 2-replica
checks (`mirrored_reports`), which splits the CPU into 2 logical devices before TF
initialises. From the same random weights, a
64-exposure batch is scored on one device and as two 32-exposure replica halves; the
checks are
  - the constraint loss each replica computes equals the single-device one, and both
    equal lambda * sum_l ||W_cvr[l] - W_buy|action[l]||^2 computed in numpy;
  - the gradients of the constraint on the two tied towers, summed over replicas (each
    replica's loss divided by the replica count, as train_step does), equal the
    single-device ones and the numpy oracle +-2 lambda (W_cvr - W_buy|action);
  - the same holds for the gradient of the whole loss (compute_loss) on the tied towers;
  - one SGD train step moves the tied towers identically on 2 replicas and on 1 device.
"""


import numpy as np
import pytest
import tensorflow as tf

from tests.test_strategy import _Path, shared_mirrored_reports, single_and_mirrored

REPLICAS = 2
BATCH = 64
LAMBDA = 0.05  # large enough that the tie's gradient is comparable to the task losses'
TOLERANCE = 1e-5
TIED = ("cvr_tower", "purchase_given_action_tower")

pytestmark = pytest.mark.slow


def _max_diff(first, second) -> float:
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(first, second))


def _tower_variables(model):
  return [v for name in TIED for v in model.scorer.get_layer(name).trainable_variables]


def mirrored_tie_report(tmp_dir: str) -> dict:
  """The tie's loss and gradients on one device vs 2 replicas (in a process whose CPU
  tests.test_strategy.split_cpu split into REPLICAS logical devices)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tests import test_model_zoo  # pylint: disable=g-import-not-at-top
  from tests.test_strategy import _one_step  # pylint: disable=g-import-not-at-top

  def build():
    return test_model_zoo.build_zoo("esmc", _Path(tmp_dir),
                                    params={"constraint_lambda": LAMBDA})

  tf_keras.utils.set_random_seed(0)
  features, labels = test_model_zoo.make_labelled_batch(BATCH, seed=3)
  batch = (features, labels)
  single, mirrored, strategy, initial = single_and_mirrored(build, features)

  # Numpy oracle: the tied towers' Dense kernels and biases, layer by layer.
  cvr = [w.numpy().astype(np.float64)
         for w in single.scorer.get_layer("cvr_tower").trainable_variables]
  buy = [w.numpy().astype(np.float64)
         for w in single.scorer.get_layer("purchase_given_action_tower").trainable_variables]
  oracle_constraint = LAMBDA * sum(float(np.sum((c - b) ** 2)) for c, b in zip(cvr, buy))
  oracle_grads = ([2 * LAMBDA * (c - b) for c, b in zip(cvr, buy)]
                  + [-2 * LAMBDA * (c - b) for c, b in zip(cvr, buy)])

  variables = _tower_variables(single)
  with tf.GradientTape(persistent=True) as tape:
    single_total = single.compute_loss(batch, training=True)
    single_constraint = single.constraint_loss()
  single_total_grads = [g.numpy() for g in tape.gradient(single_total, variables)]
  single_constraint_grads = [g.numpy() for g in tape.gradient(single_constraint, variables)]

  halves = tf.data.Dataset.from_tensor_slices(batch).batch(BATCH // REPLICAS)
  distributed = strategy.distribute_datasets_from_function(lambda _: halves)
  replica_batch = next(iter(distributed))
  mirrored_variables = _tower_variables(mirrored)

  def replica_step(b):
    with tf.GradientTape(persistent=True) as tape:
      total = mirrored.compute_loss(b, training=True) / REPLICAS
      constraint = mirrored.constraint_loss()
      scaled_constraint = constraint / REPLICAS
    return (constraint, tape.gradient(total, mirrored_variables),
            tape.gradient(scaled_constraint, mirrored_variables))

  constraints, total_grads, constraint_grads = strategy.run(replica_step,
                                                            args=(replica_batch,))

  def summed(per_replica):
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy()
            for g in per_replica]

  mirrored_total_grads = summed(total_grads)
  mirrored_constraint_grads = summed(constraint_grads)

  single_logs, single_weights = _one_step(single, iter(tf.data.Dataset.from_tensors(batch)))
  mirrored_logs, mirrored_weights = _one_step(mirrored, iter(distributed))
  tied_indices = [i for i, v in enumerate(single.trainable_variables)
                  if any(v is w for w in variables)]
  return {
      "oracle_constraint": oracle_constraint,
      "single_constraint": float(single_constraint),
      "replica_constraints": [float(x) for x in
                              strategy.experimental_local_results(constraints)],
      "constraint_grad_vs_oracle": _max_diff(single_constraint_grads, oracle_grads),
      "oracle_grad_size": max(float(np.max(np.abs(g))) for g in oracle_grads),
      "mirrored_constraint_grad_vs_single": _max_diff(mirrored_constraint_grads,
                                                      single_constraint_grads),
      "mirrored_total_grad_vs_single": _max_diff(mirrored_total_grads, single_total_grads),
      "total_grad_size": max(float(np.max(np.abs(g))) for g in single_total_grads),
      "single_logged_constraint": single_logs["constraint_loss"],
      "mirrored_logged_constraint": mirrored_logs["constraint_loss"],
      "tied_update": _max_diff([single_weights[i] for i in tied_indices],
                               [initial[i] for i in tied_indices]),
      "tied_weight_diff_after_step": _max_diff(
          [single_weights[i] for i in tied_indices],
          [mirrored_weights[i] for i in tied_indices]),
  }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  return shared_mirrored_reports(tmp_path_factory)["tie"]


def test_constraint_loss_is_the_same_on_every_replica_and_matches_numpy(report):
  assert report["oracle_constraint"] > 0.1  # independently initialised towers differ
  assert report["single_constraint"] == pytest.approx(report["oracle_constraint"], rel=1e-5)
  assert len(report["replica_constraints"]) == REPLICAS
  for value in report["replica_constraints"]:
    assert value == pytest.approx(report["single_constraint"], rel=1e-6)
  assert report["mirrored_logged_constraint"] == pytest.approx(
      report["single_logged_constraint"], rel=1e-6)


def test_tie_gradients_on_both_towers_match_numpy_and_single_device(report):
  assert report["oracle_grad_size"] > 1e-2
  assert report["constraint_grad_vs_oracle"] < TOLERANCE, report
  assert report["mirrored_constraint_grad_vs_single"] < TOLERANCE, report


def test_whole_loss_gradient_on_the_tied_towers_equals_single_device(report):
  assert report["total_grad_size"] > 1e-2
  assert report["mirrored_total_grad_vs_single"] < TOLERANCE, report


def test_sgd_step_moves_the_tied_towers_as_on_one_device(report):
  assert report["tied_update"] > 1000 * TOLERANCE
  assert report["tied_weight_diff_after_step"] < TOLERANCE, report
