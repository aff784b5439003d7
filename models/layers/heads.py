"""Named probabilities with their log-space twins: how a paper's model composes its heads.

Flow position: towers' logits -> **heads** -> (a) the scorer's exported probabilities
(models.layers.probability: clipped sigmoids, products, mixtures) and (b) each
probability's log-odds, computed in log space (models.layers.log_space), which the
training losses and metrics read (models.multitask.assemble).

A model writes its probability graph once, e.g. ESMM:
  ctr = heads.sigmoid(logits["ctr"], "ctr")
  cvr = heads.sigmoid(logits["cvr"], "cvr")
  ctcvr = heads.product([ctr, cvr], "ctcvr")
and gets both the served ctcvr = ctr * cvr and its exact log-odds.
"""

import dataclasses
from typing import Any, Optional, Sequence

from models.layers import log_space
from models.layers import probability


@dataclasses.dataclass(frozen=True)
class Head:
  """One named probability of the graph (KerasTensors).

  Attributes:
    name: the output name (e.g. "ctcvr").
    probability: float32 [batch, 1], the exported probability (clipped for serving).
    log_pair: float32 [batch, 2], [log p, log(1 - p)], unclipped.
    direct_logit: float32 [batch, 1], the tower logit when the head is a plain sigmoid
      (so the loss uses it without a round trip), else None.
  """

  name: str
  probability: Any
  log_pair: Any
  direct_logit: Optional[Any] = None

  def logit(self) -> Any:
    """log p - log(1 - p), float32 [batch, 1]: the log-odds the loss is computed from."""
    if self.direct_logit is not None:
      return self.direct_logit
    return log_space.LogPairLogit(name=f"{self.name}_log_odds")(self.log_pair)


def sigmoid(logit, name: str) -> Head:
  """p = sigmoid(logit): a tower's probability."""
  return Head(name, probability.ProbabilityHead(name=name)(logit),
              log_space.SigmoidLogPair(name=f"{name}_log_pair")(logit), direct_logit=logit)


def product(factors: Sequence[Head], name: str) -> Head:
  """p = p_1 * ... * p_k along a behaviour path (e.g. ctcvr = ctr * cvr)."""
  return Head(name,
              probability.ProbabilityProduct(name=name)([f.probability for f in factors]),
              log_space.LogPairProduct(name=f"{name}_log_pair")([f.log_pair for f in factors]))


def mixture(branch: Head, given: Head, given_not: Head, name: str) -> Head:
  """p = P(branch) * P(t | branch) + (1 - P(branch)) * P(t | no branch)."""
  heads = (branch, given, given_not)
  return Head(name,
              probability.ProbabilityMixture(name=name)([h.probability for h in heads]),
              log_space.LogPairMixture(name=f"{name}_log_pair")([h.log_pair for h in heads]))


def alias(head: Head, name: str) -> Head:
  """The same probability under a second output name (e.g. HM3's ctmacro as ctavr)."""
  return Head(name, probability.ProbabilityAlias(name=name)(head.probability),
              head.log_pair, direct_logit=head.direct_logit)


def ratio(numerator: Head, denominator: Head, name: str) -> Head:
  """p = clip(numerator / denominator) (e.g. AITM's cvr = ctcvr / ctr, clipped)."""
  return Head(name,
              probability.ProbabilityRatio(name=name)([numerator.probability,
                                                       denominator.probability]),
              log_space.LogPairRatio(name=f"{name}_log_pair")([numerator.log_pair,
                                                               denominator.log_pair]))
