"""When the host loop logs, evaluates and saves: `Schedule` and its checks.

Plain Python (no JAX), so the command line can validate a config's frequencies before the heavy
imports; `training.loop` re-exports it as `loop.Schedule`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop logs, evaluates and saves (all in optimizer steps).

    Attributes:
      n_iters: the step to train to.
      log_freq: log the metrics every this many steps (and at the end).
      snapshot_freq: keep a checkpoint and call `on_snapshot` every this many steps (and at
        the end).
      preemption_freq: save the latest checkpoint every this many steps.
      eval_freq: call `on_eval` every this many steps (0: never).
      steps_per_call: optimizer steps per `step_fn` call (`n_jitted_steps`).
    """

    n_iters: int
    log_freq: int
    snapshot_freq: int
    preemption_freq: int
    eval_freq: int = 0
    steps_per_call: int = 1

    def check(self, prefix: str = "config.training") -> None:
        """Raises a ValueError naming the field unless every frequency fits the steps."""
        n = self.steps_per_call
        if n <= 0:
            raise ValueError(f"{prefix}.n_jitted_steps={n} must be positive.")
        fields = {
            "n_iters": self.n_iters,
            "log_freq": self.log_freq,
            "snapshot_freq": self.snapshot_freq,
            "snapshot_freq_for_preemption": self.preemption_freq,
        }
        for name, value in fields.items():
            if value <= 0:
                raise ValueError(f"{prefix}.{name}={value} must be positive.")
        if self.eval_freq < 0:
            raise ValueError(f"{prefix}.eval_freq={self.eval_freq} must be >= 0.")
        for name, value in {**fields, "eval_freq": self.eval_freq}.items():
            if name != "n_iters" and value % n:
                raise ValueError(
                    f"{prefix}.{name}={value} must be a multiple of {prefix}.n_jitted_steps={n}"
                )

    @classmethod
    def from_config(cls, training, prefix: str = "config.training") -> Schedule:
        """The schedule of a `config.training`-like node (`eval_freq`, `n_jitted_steps`
        optional), checked: a bad field raises a ValueError naming `<prefix>.<field>`."""
        schedule = cls(
            n_iters=training.n_iters,
            log_freq=training.log_freq,
            snapshot_freq=training.snapshot_freq,
            preemption_freq=training.snapshot_freq_for_preemption,
            eval_freq=training.get("eval_freq", 0),
            steps_per_call=training.get("n_jitted_steps", 1),
        )
        schedule.check(prefix)
        return schedule

    def due(self, step: int, freq: int) -> bool:
        return freq > 0 and step % freq == 0
