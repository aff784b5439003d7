"""Post-hoc calibration of the exported probabilities, fitted on the validation split.

Flow position: training.trainer (after training; the best epoch's weights) scores the
validation split -> **fit_calibration** -> models.layers.calibration.OutputCalibration
on top of the scorer in the exported SavedModel -> the served probabilities.

Why (docs/TRAINING.md, "Calibration"): a model's summed predictions on the eval day
were 0.91-1.10 of the truth's depending only on the training seed (where Adam's last
steps left the output biases), and the entire-space models' cvr over unclicked
exposures was 0.66-0.95 of the truth: towers learn cvr least where clicks are rare, and
in the simulated world (as in the ESMM paper's data) cvr is highest exactly there.

What is calibrated (one Coefficients each):
  ctr            over all validation exposures, target `click`;
  each RATE the model exports, conditional on a click (cvr: target `purchase`; action |
                 click: `action`; micro | click: `micro`), over clicked exposures.
A rate is read from its output (e.g. `cvr`, `p_action_given_click`) or, when the model
exports only the product, as product / ctr (e.g. AITM-action's ctavr / ctr). After
calibration the products are recomposed from calibrated factors (ctcvr = ctr' * cvr',
ctavr = ctr' * action', ...), so the model's probability identities still hold. Outputs
inside a rate (e.g. ESM2's P(buy | action)) pass through unchanged.

Methods (train.calibration), z = logit of the model's probability, z_ctr = logit ctr
(clipped to the range of the clicked validation rows, so the fit never extrapolates it):
  none       no calibration.
  bias       logit p' = z + b: one intercept per probability; on the validation split the
             calibrated predictions sum to the labels (the score equation of b).
  platt      logit p' = a z + b (Platt scaling).
  platt_ctr  ctr as platt; a rate r | click: logit r' = a z + c1 z_ctr + c2 z_ctr^2 + b,
             fitted on the clicked exposures: the ctr terms carry what the clicks teach
             about how the rate's error changes with the click propensity over to the
             unclicked exposures (selection into clicks is ignorable given x: the
             entire-space assumption).
  ips_ctr    platt_ctr, each clicked exposure weighted by 1 / ctr' (its calibrated click
             propensity, at most MAX_PROPENSITY_WEIGHT; weights scaled to mean 1), so the
             clicked rows stand for all exposures (inverse propensity weighting, as in
             ESCM2's IPS loss): the rate is fitted for the entire space, not the clicks.
Each is a maximum-likelihood logistic regression (Newton's method in float64) with the
model's log-odds as offset and a small ridge pull towards the identity; each Newton step
is halved until the penalised log-likelihood does not fall. A form needs
MIN_POSITIVES[form] positives (and negatives) on its rows, else the next simpler one is
fitted (platt_ctr / ips_ctr -> platt -> bias -> none, as trained): with ~40 validation
purchases a 4-coefficient weighted fit ended at coefficients of 1e5 (a 300k-impression
world at 1.5% CTR, benchmarks/results/sweep.md). Deterministic: no randomness.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from configs import config as config_lib
from models.layers import probability

METHODS = config_lib.CALIBRATIONS  # ("none", "bias", "platt", "platt_ctr", "ips_ctr")
CTR = "ctr"
CLICK = "click"
# Probabilities are clipped to [EPSILON, 1 - EPSILON] before the logit, as the heads clip.
EPSILON = probability.EPSILON
LOGIT_LIMIT = float(np.log(1.0 - EPSILON) - np.log(EPSILON))  # |logit| of a clipped p
MAX_PROPENSITY_WEIGHT = 100.0  # ips_ctr: 1 / ctr' is capped here (ctr' >= 1%)
# Positives (and negatives) a form needs: about 25 per fitted coefficient.
MIN_POSITIVES = {"bias": 10, "platt": 50, "platt_ctr": 100, "ips_ctr": 100}
FALLBACK = {"ips_ctr": "platt", "platt_ctr": "platt", "platt": "bias", "bias": "none"}
MAX_STEP_HALVINGS = 30
RIDGE = 1e-3  # pull of each coefficient towards the identity, in log-likelihood units
MAX_NEWTON_STEPS = 100


@dataclasses.dataclass(frozen=True)
class Rate:
  """A probability conditional on a click that the calibration fits.

  Attributes:
    name: its key in Calibration.rates (e.g. "cvr").
    label: the validation label it is fitted to, over clicked exposures.
    output: the scorer output holding it, when the model exports it.
    products: outputs equal to ctr * rate (recomposed after calibration).
  """

  name: str
  label: str
  output: str
  products: Tuple[str, ...]


RATES = (
    Rate("cvr", "purchase", "cvr", ("ctcvr",)),
    Rate("action", "action", "p_action_given_click", ("ctavr", "ctmacro")),
    Rate("micro", "micro", "p_micro_given_click", ("ctmicro",)),
)


@dataclasses.dataclass(frozen=True)
class ArrayOps:
  """The array functions Calibration.apply needs: numpy (float64, fitting and
  benchmarks) or TensorFlow (float32, the served graph: models.layers.calibration)."""

  as_array: Callable[[Any], Any]  # a scorer output -> an array of this namespace
  clip: Callable[[Any, float, float], Any]
  log: Callable[[Any], Any]
  log1p: Callable[[Any], Any]
  sigmoid: Callable[[Any], Any]

  def logit(self, p):
    """Log-odds of probabilities clipped to [EPSILON, 1 - EPSILON]."""
    p = self.clip(p, EPSILON, 1.0 - EPSILON)
    return self.log(p) - self.log1p(-p)

  def probability(self, z):
    """sigmoid(z) clipped to [EPSILON, 1 - EPSILON], as the heads clip."""
    return self.clip(self.sigmoid(z), EPSILON, 1.0 - EPSILON)


NUMPY = ArrayOps(as_array=lambda value: np.asarray(value, np.float64).reshape(-1),
                 clip=np.clip, log=np.log, log1p=np.log1p,
                 sigmoid=lambda z: 1.0 / (1.0 + np.exp(-z)))


@dataclasses.dataclass(frozen=True)
class Coefficients:
  """logit p' = slope z + ctr_slope c + ctr_quadratic c^2 + intercept, with
  c = clip(z_ctr, ctr_low, ctr_high); and what it was fitted on.

  `method` is the form actually fitted (a fallback to "bias" or "none" says so);
  rows / positives count the validation exposures it was fitted on.
  """

  slope: float = 1.0
  ctr_slope: float = 0.0
  ctr_quadratic: float = 0.0
  intercept: float = 0.0
  ctr_low: float = -LOGIT_LIMIT
  ctr_high: float = LOGIT_LIMIT
  method: str = "none"
  rows: int = 0
  positives: int = 0

  def transform(self, z, z_ctr, ops: ArrayOps = NUMPY):
    """Calibrated log-odds of log-odds z, given the ctr's z_ctr (arrays of `ops`)."""
    c = ops.clip(z_ctr, self.ctr_low, self.ctr_high)
    return self.slope * z + self.ctr_slope * c + self.ctr_quadratic * c * c + self.intercept


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The fitted calibration of one model: ctr and its click-conditional rates.

  Attributes:
    method: the requested method (METHODS).
    ctr: the ctr's coefficients.
    rates: rate name (RATES) -> coefficients, for the rates the model exports.
  """

  method: str
  ctr: Coefficients
  rates: Dict[str, Coefficients]

  def to_dict(self) -> Dict[str, Any]:
    return {"method": self.method, "ctr": dataclasses.asdict(self.ctr),
            "rates": {name: dataclasses.asdict(c) for name, c in sorted(self.rates.items())}}

  @classmethod
  def from_dict(cls, value: Mapping[str, Any]) -> "Calibration":
    return cls(method=value["method"], ctr=Coefficients(**value["ctr"]),
               rates={name: Coefficients(**c) for name, c in value["rates"].items()})

  def apply(self, outputs: Mapping[str, Any], ops: ArrayOps = NUMPY) -> Dict[str, Any]:
    """The calibrated outputs, the others passed through (as ops.as_array).

    `outputs` maps output name -> probabilities from the scorer ([n] or [n, 1]); with
    NUMPY every value comes back float64 [n].
    """
    result = {name: ops.as_array(value) for name, value in outputs.items()}
    if CTR not in result:
      return result
    z_ctr = ops.logit(result[CTR])
    ctr = ops.probability(self.ctr.transform(z_ctr, z_ctr, ops))
    for rate in RATES:
      value = rate_probability(result, rate, ops)
      if value is None:
        continue
      coefficients = self.rates.get(rate.name, Coefficients())
      calibrated = ops.probability(coefficients.transform(ops.logit(value), z_ctr, ops))
      if rate.output in result:
        result[rate.output] = calibrated
      for product in rate.products:
        if product in result:
          result[product] = ops.clip(ctr * calibrated, EPSILON, 1.0 - EPSILON)
    result[CTR] = ctr
    return result


def logit(p: np.ndarray) -> np.ndarray:
  """float64 [n] log-odds of probabilities clipped to [EPSILON, 1 - EPSILON]."""
  return NUMPY.logit(NUMPY.as_array(p))


def rate_probability(outputs: Mapping[str, Any], rate: Rate, ops: ArrayOps = NUMPY):
  """The rate's probability: its output, else product / ctr (clipped), else None."""
  if rate.output in outputs:
    return ops.as_array(outputs[rate.output])
  if CTR not in outputs:
    return None
  for product in rate.products:
    if product in outputs:
      ratio = ops.as_array(outputs[product]) / ops.as_array(outputs[CTR])
      return ops.clip(ratio, EPSILON, 1.0 - EPSILON)
  return None


def fit_logistic_offset(offset: np.ndarray, covariates: np.ndarray, target: np.ndarray,
                        weights: Optional[np.ndarray] = None,
                        ridge: float = RIDGE) -> np.ndarray:
  """Maximum-likelihood delta of logit p = offset + covariates @ delta (float64 [k]).

  Args:
    offset: [n] fixed log-odds (the model's own).
    covariates: [n, k] (e.g. columns z, z_ctr, 1).
    target: [n] 0/1 labels.
    weights: optional [n] non-negative row weights of the log-likelihood.
    ridge: L2 penalty ridge/2 * |delta|^2 (pulls towards the identity, delta = 0).
  Newton's method from delta = 0, each step halved until the penalised log-likelihood
  does not fall (it is concave: this converges).
  """
  offset = np.asarray(offset, np.float64)
  x = np.asarray(covariates, np.float64)
  y = np.asarray(target, np.float64)
  w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64)
  delta = np.zeros(x.shape[1])

  def objective(d):  # the penalised log-likelihood (to maximise)
    z = offset + x @ d
    return float(w @ (y * z - np.logaddexp(0.0, z)) - 0.5 * ridge * d @ d)

  current = objective(delta)
  for _ in range(MAX_NEWTON_STEPS):
    p = 1.0 / (1.0 + np.exp(-(offset + x @ delta)))
    gradient = x.T @ (w * (p - y)) + ridge * delta
    hessian = (x * (w * p * (1.0 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
    step = np.linalg.solve(hessian, gradient)
    for _ in range(MAX_STEP_HALVINGS):
      candidate = objective(delta - step)
      if candidate >= current:
        break
      step = step / 2.0
    else:
      break  # no ascent along the Newton direction: at the optimum to precision
    delta, current = delta - step, candidate
    if np.max(np.abs(step)) < 1e-10:
      break
  return delta


def fit_coefficients(z: np.ndarray, z_ctr: Optional[np.ndarray], target: np.ndarray,
                     method: str,
                     weights: Optional[np.ndarray] = None) -> Coefficients:
  """Fits one probability's coefficients (module docstring) on its rows.

  z: [n] its log-odds; z_ctr: [n] the ctr's log-odds (the ctr terms of platt_ctr and
  ips_ctr; None for the ctr itself, which then gets platt); target: [n] 0/1;
  weights: optional [n] row weights (ips_ctr's inverse propensities).
  """
  target = np.asarray(target, np.float64).reshape(-1)
  rows, positives = int(len(target)), int(target.sum())
  if method in ("platt_ctr", "ips_ctr") and z_ctr is None:
    method = "platt"
  while method != "none" and min(positives, rows - positives) < MIN_POSITIVES[method]:
    method = FALLBACK[method]
  if method == "none":
    return Coefficients(rows=rows, positives=positives)
  ones = np.ones_like(z)
  low, high = -LOGIT_LIMIT, LOGIT_LIMIT
  if method == "bias":
    columns = [ones]
  elif method == "platt":
    columns = [z, ones]
  else:
    low, high = float(z_ctr.min()), float(z_ctr.max())
    columns = [z, z_ctr, z_ctr * z_ctr, ones]
  delta = fit_logistic_offset(z, np.stack(columns, axis=1), target,
                              weights if method == "ips_ctr" else None)
  return Coefficients(slope=1.0 + float(delta[0]) if method != "bias" else 1.0,
                      ctr_slope=float(delta[1]) if len(columns) == 4 else 0.0,
                      ctr_quadratic=float(delta[2]) if len(columns) == 4 else 0.0,
                      intercept=float(delta[-1]), ctr_low=low, ctr_high=high,
                      method=method, rows=rows, positives=positives)


def propensity_weights(ctr: np.ndarray,
                       max_weight: Optional[float] = MAX_PROPENSITY_WEIGHT) -> np.ndarray:
  """float64 [n] min(1 / ctr, max_weight) (uncapped when max_weight is None), scaled to
  mean 1."""
  weights = 1.0 / np.asarray(ctr, np.float64)
  if max_weight is not None:
    weights = np.minimum(weights, max_weight)
  return weights / weights.mean()


def fit_calibration(outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    method: str, propensity: Optional[np.ndarray] = None,
                    max_weight: Optional[float] = MAX_PROPENSITY_WEIGHT) -> Calibration:
  """Fits the calibration of a model's outputs on validation rows.

  Args:
    outputs: output name -> [n] probabilities of the validation exposures (must hold
      `ctr`).
    labels: label name -> [n] 0/1 (must hold `click`; a rate whose label is missing is
      left as trained).
    method: one of METHODS.
    propensity: ips_ctr only: [n] click propensities to weight the clicked rows by
      instead of the calibrated ctr (a diagnostic: with a simulated world's true
      P(click | x) it separates the propensity's error from the rest,
      benchmarks.calibration); None (the exported fit) uses the calibrated ctr. Unused
      when too few positives make ips_ctr fall back to platt.
    max_weight: ips_ctr only: the cap on 1 / propensity (None: uncapped).

  Raises:
    ValueError: unknown method, no ctr output / click label, a propensity or
      max_weight given to a method other than ips_ctr, a propensity of another length or
      outside (0, 1] (NaN included), or a max_weight <= 0.
  """
  if method not in METHODS:
    raise ValueError(f"calibration method {method!r}: use one of {list(METHODS)}")
  if CTR not in outputs:
    raise ValueError(f"calibration needs a {CTR!r} output; the model has {sorted(outputs)}")
  if CLICK not in labels:
    raise ValueError(f"calibration needs the {CLICK!r} label; have {sorted(labels)}")
  if (propensity is not None or max_weight != MAX_PROPENSITY_WEIGHT) and method != "ips_ctr":
    raise ValueError(f"propensity and max_weight apply to ips_ctr only, not {method!r}")
  if max_weight is not None and not max_weight > 0:
    raise ValueError(f"max_weight: a cap on 1 / propensity > 0 or None, got {max_weight}")
  z_ctr = logit(outputs[CTR])
  clicked = np.asarray(labels[CLICK]).reshape(-1) > 0
  if propensity is not None:
    propensity = np.asarray(propensity, np.float64).reshape(-1)
    if propensity.shape != clicked.shape or not np.all((propensity > 0) & (propensity <= 1)):
      raise ValueError(f"propensity: {clicked.size} click probabilities in (0, 1] expected, "
                       f"got shape {propensity.shape} with range "
                       f"[{propensity.min(initial=np.inf)}, {propensity.max(initial=-np.inf)}]")
  ctr = fit_coefficients(z_ctr, None, labels[CLICK], method)
  weights = None
  if method == "ips_ctr" and clicked.any():
    if propensity is None:
      propensity = NUMPY.probability(ctr.transform(z_ctr, z_ctr))
    weights = propensity_weights(propensity[clicked], max_weight)
  rates = {}
  for rate in RATES:
    value = rate_probability(outputs, rate)
    if value is None or rate.label not in labels:
      continue
    target = np.asarray(labels[rate.label], np.float64).reshape(-1)[clicked]
    rates[rate.name] = fit_coefficients(logit(value)[clicked], z_ctr[clicked], target,
                                        method, weights)
  return Calibration(method=method, ctr=ctr, rates=rates)


def summary(calibration: Calibration) -> str:
  """One line per probability: its form and coefficients (for logs)."""
  lines = []
  for name, c in [(CTR, calibration.ctr), *sorted(calibration.rates.items())]:
    lines.append(f"{name}: {c.method} slope {c.slope:.4f} ctr_slope {c.ctr_slope:.4f} "
                 f"ctr_quadratic {c.ctr_quadratic:.4f} intercept {c.intercept:.4f} "
                 f"({c.positives} positives / {c.rows} rows)")
  return "; ".join(lines)

