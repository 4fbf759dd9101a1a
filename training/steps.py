"""The jitted train and eval steps of EMA-tracked networks (score models, classifiers).

`make_train_step` fuses `n` optimizer steps per call (the original `n_jitted_steps`) in a
`lax.scan`, on every backend: the networks' convolutions (models/conv.py) have canonical-layout
gradients, which XLA:CPU runs inside a loop body as fast as at the top level (with lax's own
gradients it fell back to naive loops, 65 s vs 2 s per DDPM++ step, jax-ml/jax#12868, and the
steps had to be unrolled on CPU, compiling n times as long). `$SCORE_SDE_LOOPS=host` (see
`utils.device_loops`) still unrolls them (tests check both agree).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging

import utils
from training.packing import SmallLeaves
from training.state import TrainState, all_finite


def ema_update(ema_params, params, ema_rate: float):
    """`e * rate + p * (1 - rate)`: a fixed-rate EMA from the initial params (JAX original)."""
    return jax.tree.map(lambda e, p: e * ema_rate + p * (1.0 - ema_rate), ema_params, params)


def apply_gradients(
    state: TrainState, grads, tx: optax.GradientTransformation, ema_rate: float, pack=None
):
    """One step of `tx` and of the EMA: `(new state, whether its params are all finite)`.

    `pack` (None: on CPU) runs the update on the params' small leaves packed into one vector
    (`packing.SmallLeaves`): the same values, except that a global norm sums in another order.
    It needs a `tx` that treats every element alike apart from global reductions, as
    `losses.make_optimizer`'s (clipping by global norm, Adam / AdamW); pass False otherwise.
    """
    packer = SmallLeaves(state.params, enabled=pack)
    params, ema = packer.pack(state.params), packer.pack(state.ema_params)
    updates, opt_state = tx.update(packer.pack(grads), packer.pack_within(state.opt_state), params)
    params = optax.apply_updates(params, updates)
    ema = ema_update(ema, params, ema_rate)
    finite = all_finite(params)
    new = state.replace(
        step=state.step + 1,
        params=packer.unpack(params),
        ema_params=packer.unpack(ema),
        opt_state=packer.unpack_within(opt_state),
    )
    return new, finite


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    ema_rate: float,
    base_key,
    state_sharding=None,
    batch_sharding=None,
    *,
    has_aux: bool = False,
    loss_name: str = "loss",
    device_loop: bool | None = None,
    pack: bool | None = None,
):
    """Jitted `train_step(state, batch) -> (state, metrics)` over a leading steps axis.

    Args:
      loss_fn: `loss_fn(key, params, batch) -> loss`, or `(loss, aux_dict)` with `has_aux`.
      tx: the optax optimizer.
      ema_rate: rate of the EMA of the params.
      base_key: step `s` uses the key `fold_in(base_key, s)`, so a resumed run repeats an
        uninterrupted one exactly.
      state_sharding, batch_sharding: shardings of the state and of the batch
        `[n_steps, B, ...]` (None: let jit decide).
      has_aux: `loss_fn` returns `(loss, aux)`; aux scalars become metrics.
      loss_name: the metric name of the loss.
      device_loop: scan (True) or unroll (False) the steps; None = `utils.device_loops()`.
      pack: update the params' small leaves packed into one vector (`apply_gradients`; None:
        on CPU, where the DDPM++ cont. step compiles to 29 % fewer instructions).

    Returns:
      `train_step(state, batch)`; batch leaves have a leading axis of the steps to run, and the
      metrics are `[n_steps]` arrays: the loss, the aux values and `finite` (loss and new params
      all finite, checked by the host loop before anything is saved).
    """
    scan = utils.device_loops(device_loop)

    def one_step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=has_aux)
        out, grads = grad_fn(key, state.params, batch)
        loss, aux = out if has_aux else (out, {})
        new, params_finite = apply_gradients(state, grads, tx, ema_rate, pack)
        return new, {loss_name: loss, **aux, "finite": jnp.isfinite(loss) & params_finite}

    def train_step(state, batch):
        if scan:
            return jax.lax.scan(one_step, state, batch)
        n = jax.tree.leaves(batch)[0].shape[0]
        outs = []
        for i in range(n):
            state, metrics = one_step(state, jax.tree.map(lambda x, i=i: x[i], batch))
            outs.append(metrics)
        return state, jax.tree.map(lambda *v: jnp.stack(v), *outs)

    shardings = {}
    if state_sharding is not None:
        shardings = dict(
            in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None)
        )
    return CompiledOnFirstCall(jax.jit(train_step, donate_argnums=0, **shardings))


class CompiledOnFirstCall:
    """A jitted function that compiles ahead of time at its first call and returns the
    compiler's freed host memory to the OS (`utils.release_host_memory`) before it first runs,
    so that the step's buffers do not come on top of the compiler's heap (peak RSS of the full
    DDPM++ train step at batch 8: ~1 GB less on CPU), and drops the jitted function's trace
    and lowering caches once the executable exists.

    Later calls run the compiled executable; calls it does not fit (other shapes, shardings)
    and traced calls (`jax.make_jaxpr`) go through the jitted function, as does `lower`.
    """

    def __init__(self, jitted):
        self.jitted = jitted
        self._compiled = None
        self._warned = False

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)

    def compile_ahead(self, *args) -> CompiledOnFirstCall:
        """Compiles now for `args` (arrays or `jax.ShapeDtypeStruct`s), e.g. before the train
        state exists: XLA's transient compile memory (~1.5 GB for the DDPM++ cont. step) then
        never sits on top of the state. A no-op once compiled."""
        if self._compiled is None:
            self._compiled = self.jitted.lower(*args).compile()
            # The jitted function's caches (its trace and lowering: ~60 MB of the DDPM++ step)
            # are not needed to run the executable; a later call that does not fit retraces.
            self.jitted.clear_cache()
            utils.release_host_memory()
        return self

    def __call__(self, *args):
        if self._compiled is None:
            if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
                return self.jitted(*args)
            self.compile_ahead(*args)
        try:
            return self._compiled(*args)
        except (TypeError, ValueError) as e:  # not the compiled signature: jit compiles anew
            if not self._warned:
                self._warned = True
                logging.warning(
                    "%s: this call does not fit the executable compiled ahead (%s); compiling "
                    "again for it (a second executable in memory, and the compile time).",
                    getattr(self.jitted, "__name__", "step"), (str(e) or type(e).__name__)[:200],
                )  # fmt: skip
            return self.jitted(*args)


def make_eval_step(loss_fn: Callable, base_key, state_sharding=None, batch_sharding=None):
    """Jitted `eval_step(state, batch) -> loss` on the EMA params (as the original).

    The key is `fold_in(fold_in(base_key, step), 2**30)`, apart from every train step's.
    """

    def eval_step(state, batch):
        key = jax.random.fold_in(jax.random.fold_in(base_key, state.step), 2**30)
        return loss_fn(key, state.ema_params, batch)

    shardings = (
        {} if state_sharding is None else dict(in_shardings=(state_sharding, batch_sharding))
    )
    return jax.jit(eval_step, **shardings)
