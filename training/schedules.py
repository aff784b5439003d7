"""Learning-rate schedules by name, for `train.lr_schedule` (constant, cosine, exponential).

Flow position: `training.trainer.make_optimizer` gives the optimizer
`learning_rate(train_config, steps_per_epoch, total_steps)`. A schedule is a function of
optimizer.iterations only, which BackupAndRestore restores, so a resumed run continues
on the same curve.

  constant     learning_rate
  cosine       learning_rate * (m + (1 - m) * (1 + cos(pi * s / S)) / 2),
               s = step - warm-up, S = total_steps - warm-up, m = lr_min_ratio
  exponential  learning_rate * lr_decay_rate ** (step / steps_per_epoch)

With `lr_warmup_steps` W > 0, steps 0..W-1 use learning_rate * (step + 1) / W (a linear
ramp that never takes a zero step) and the schedule above starts at step W.
"""

from typing import Union

import tensorflow as tf
import tf_keras

from configs import config as config_lib

Schedule = tf_keras.optimizers.schedules.LearningRateSchedule


@tf_keras.saving.register_keras_serializable(package="cvr")
class LinearWarmup(Schedule):
  """`target * (step + 1) / warmup_steps` for step < warmup_steps, then `after(step - W)`."""

  def __init__(self, after: Union[Schedule, float], warmup_steps: int, target: float):
    super().__init__()
    self.after, self.warmup_steps, self.target = after, int(warmup_steps), float(target)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = tf.constant(float(self.warmup_steps), tf.float32)
    ramp = self.target * (step + 1.0) / warmup
    after = (self.after(step - warmup) if isinstance(self.after, Schedule)
             else tf.constant(float(self.after), tf.float32))
    return tf.where(step < warmup, ramp, after)

  def get_config(self):
    after = (tf_keras.optimizers.schedules.serialize(self.after)
             if isinstance(self.after, Schedule) else self.after)
    return {"after": after, "warmup_steps": self.warmup_steps, "target": self.target}

  @classmethod
  def from_config(cls, config):
    after = config["after"]
    if isinstance(after, dict):
      after = tf_keras.optimizers.schedules.deserialize(after)
    return cls(after, config["warmup_steps"], config["target"])


def learning_rate(train_config: config_lib.TrainConfig, steps_per_epoch: int,
                  total_steps: int) -> Union[float, Schedule]:
  """The optimizer's learning rate: a float ("constant", no warm-up) or a schedule.

  Args:
    train_config: learning_rate, lr_schedule, lr_warmup_steps, lr_decay_rate, lr_min_ratio.
    steps_per_epoch: steps of one epoch (the unit of "exponential").
    total_steps: epochs * steps_per_epoch (the length of "cosine").
  """
  rate = float(train_config.learning_rate)
  warmup = int(train_config.lr_warmup_steps)
  name = train_config.lr_schedule
  if name == "constant":
    after = rate
  elif name == "cosine":
    after = tf_keras.optimizers.schedules.CosineDecay(
        rate, decay_steps=max(1, total_steps - warmup), alpha=train_config.lr_min_ratio)
  elif name == "exponential":
    after = tf_keras.optimizers.schedules.ExponentialDecay(
        rate, decay_steps=max(1, steps_per_epoch), decay_rate=train_config.lr_decay_rate)
  else:
    raise ValueError(f"train.lr_schedule {name!r}: use one of {config_lib.LR_SCHEDULES}")
  return LinearWarmup(after, warmup, rate) if warmup else after
