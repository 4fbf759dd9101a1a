"""The one host loop: steps, metrics, checkpoints, periodic hooks, stop signals.

Every trained network goes through `run`: the score models (`run_lib.train`), the DCGAN of the
DDLS experiments, the noise-conditional classifier and the offline feature extractor. The loop
keeps the device busy (losses are fetched only when logging or saving), refuses to save a
state whose loss or parameters stopped being finite (the step functions return a `finite`
flag), turns SIGTERM / SIGINT into a checkpoint and a clean exit, and shows a progress bar.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

import utils
from training import checkpoints
from training.schedule import Schedule  # noqa: F401 - re-exported: loop.Schedule


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks (save, then exit cleanly)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteError(FloatingPointError):
    """A loss or the parameters stopped being finite; nothing after the last good save is kept."""


class _Pending:
    """Device metrics not yet fetched: `(first_step, metrics)` of each call."""

    def __init__(self, nonfinite_hint: str):
        self.items: list[tuple[int, dict]] = []
        self.hint = nonfinite_hint

    def add(self, first_step: int, metrics: dict) -> None:
        self.items.append((first_step, metrics))

    def flush(self) -> dict[str, float]:
        """Fetches every pending call; raises NonFiniteError at the first non-finite step.

        Returns:
          The metrics of the last step (floats), without the `finite` flag.
        """
        last = {}
        while self.items:
            first, metrics = self.items.pop(0)
            host = {k: np.asarray(v).reshape(-1) for k, v in jax.device_get(metrics).items()}
            finite = host.pop("finite", np.ones(1, bool))
            # Every step's values must be finite too (steps without a `finite` flag).
            n = max([len(finite), *(len(v) for v in host.values())])
            finite = np.broadcast_to(finite, (n,)).copy()
            for v in host.values():
                finite &= np.broadcast_to(np.isfinite(v), (n,))
            if not finite.all():
                i = int(np.flatnonzero(~finite)[0])
                at = {k: v[min(i, len(v) - 1)] for k, v in host.items()}
                bad = [k for k, v in at.items() if not np.isfinite(v)] or ["parameters"]
                values = ", ".join(f"{k} {v:.4g}" for k, v in at.items())
                raise NonFiniteError(
                    f"Non-finite {', '.join(bad)} at step {first + i + 1} ({values}); the last "
                    f"good checkpoint is kept. {self.hint}"
                )
            last = {k: float(v[-1]) for k, v in host.items()}
        return last


def run(
    state,
    step_fn: Callable,
    batches: Iterator,
    schedule: Schedule,
    *,
    first_step: int,
    manager=None,
    writer: utils.MetricWriter | None = None,
    on_eval: Callable[[object, int], None] | None = None,
    on_snapshot: Callable[[object, int], None] | None = None,
    images_per_step: int = 0,
    nonfinite_hint: str = "",
    desc: str = "train",
):
    """Runs `step_fn` from `first_step` to `schedule.n_iters`; returns the final state.

    Args:
      state: the state to start from (already on its devices).
      step_fn: `step_fn(state, batch) -> (state, metrics)`; metrics are device arrays, one
        value per optimizer step (or one for the call), plus an optional boolean `finite`.
      batches: yields one `step_fn` batch per call.
      schedule: when to log, evaluate and save.
      first_step: the optimizer step `state` is at (the host does not read it from the device).
      manager: the checkpoint manager (None: no checkpoints).
      writer: metrics go to `writer.write(step, **metrics, steps_per_sec=..)` (None: not
        written).
      on_eval: `on_eval(state, step)` every `schedule.eval_freq` steps.
      on_snapshot: `on_snapshot(state, step)` at every `snapshot_freq`-th step and at the end,
        after the checkpoint is saved.
      images_per_step: if set, `images_per_sec` is logged too.
      nonfinite_hint: what to change when a loss turns non-finite (appended to the error).
      desc: the progress bar's label.

    Raises:
      NonFiniteError: a loss or the parameters stopped being finite; nothing after the last
        finite state is saved.
    """
    s = schedule
    if writer is not None:
        writer.drop_after(first_step)  # no step twice in metrics.jsonl after a resume
    pending = _Pending(nonfinite_hint)
    step, t_last, step_last = first_step, time.perf_counter(), first_step
    bar = utils.progress_bar(s.n_iters, first_step, desc)
    logging.info("Initial compilation, this may take a few minutes...")
    try:  # the bar is closed on an error too, so the error line starts a fresh line
        with StopSignal() as stop:
            while step < s.n_iters:
                state, metrics = step_fn(state, next(batches))
                pending.add(step, metrics)
                step += s.steps_per_call
                bar.update(s.steps_per_call)
                done = step >= s.n_iters
                if s.due(step, s.log_freq) or done:
                    last = pending.flush()
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    bar.set_postfix(**{k: f"{v:.4g}" for k, v in last.items()})
                    extra = {"images_per_sec": rate * images_per_step} if images_per_step else {}
                    if writer is not None:
                        writer.write(step, **last, steps_per_sec=rate, **extra)
                    logging.log_first_n(logging.INFO, "step %d compiled and ran.", 1, step)
                if on_eval is not None and s.due(step, s.eval_freq):
                    on_eval(state, step)
                snapshot = s.due(step, s.snapshot_freq) or done
                if snapshot or s.due(step, s.preemption_freq) or stop.received:
                    pending.flush()  # never save a state that produced a non-finite value
                    if writer is not None:  # remote workdirs: the lines up to this checkpoint
                        writer.flush()  # land before it does (a kill between keeps them)
                    if manager is not None:
                        checkpoints.save_checkpoint(manager, state)
                    if snapshot and on_snapshot is not None:
                        on_snapshot(state, step)
                if stop.received:
                    logging.warning("Received %s: checkpoint saved at step %d, exiting.",
                                    stop.received, step)  # fmt: skip
                    break
        pending.flush()
    finally:
        bar.close()
    return state
