"""Dropout masks: `models/prng.bernoulli` (threefry unrolled, one fused kernel) against
`jax.random.bernoulli` (on CPU a rolled loop over the whole array), in the same process.

Masks: a dropout (mask, scale, select) of the maps DDPM++ cont. drops at batch 8, standalone,
the two timed round robin, median of `--repeats`. Train step (`--train_step`): the full
CIFAR-10 config's jitted train step at batch 8 built twice, once with each mask, run
interleaved after one warm-up run of each, and the params after the steps compared (the masks
are the same, so they must be identical). Writes bench/results/dropout_masks.json.

    python bench/dropout_masks.py [--train_step] [--model ddpmpp|ncsnpp] [--repeats 21]
"""

import argparse
import importlib

import _common
import jax
import jax.numpy as jnp

import losses
from models import prng
from models import utils as mutils
from training import devices, score_model, steps

CONFIGS = {
    "ddpmpp": "configs.vp.cifar10_ddpmpp_continuous",
    "ncsnpp": "configs.ve.cifar10_ncsnpp_continuous",
}
SHAPES = [(8, 32, 32, 128), (8, 16, 16, 256), (8, 8, 8, 256), (8, 4, 4, 256)]


def dropout(enabled, rate=0.1):
    keep = 1.0 - rate

    def f(key, x):
        mask = prng.bernoulli(key, keep, x.shape, enabled=enabled)
        return jnp.where(mask, x / keep, 0.0)

    return jax.jit(f)


def masks(repeats):
    rows = []
    fns = {"jax": dropout(False), "fused": dropout(True)}
    for shape in SHAPES:
        x = jax.random.normal(jax.random.key(0), shape)
        key = jax.random.key(1)
        median, _ = _common.interleaved(
            {n: (lambda f=f, key=key, x=x: f(key, x)) for n, f in fns.items()}, repeats
        )
        t_jax, t_fused = median["jax"], median["fused"]
        same = bool((fns["jax"](key, x) == fns["fused"](key, x)).all())
        rows.append(
            {"shape": shape, "jax_ms": t_jax * 1e3, "fused_ms": t_fused * 1e3,
             "ratio": t_fused / t_jax, "same_output": same}
        )  # fmt: skip
        print(f"dropout {shape}: jax {t_jax * 1e3:.2f} ms, fused {t_fused * 1e3:.2f} ms, "
              f"ratio {t_fused / t_jax:.3f}, same output {same}")  # fmt: skip
    return rows


def train_step(model_name, repeats):
    config = importlib.import_module(CONFIGS[model_name]).get_config()
    config.training.batch_size = 8
    model = mutils.get_model(config)
    sde, _ = score_model.sde_from_config(config)
    tx = losses.get_optimizer(config)
    mesh = devices.make_mesh()
    ss, bs = devices.replicated(mesh), devices.batch_sharding(mesh, steps_axis=True)
    loss_fn = score_model.score_loss_fn(config, sde, model, train=True)
    abstract = score_model.abstract_train_state(config, model, tx)
    batch = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32)
    compiled, instructions = {}, {}
    fused = prng.bernoulli

    def jax_masks(key, p, shape, enabled=None):
        return fused(key, p, shape, enabled=False)

    for name, bernoulli in (("jax", jax_masks), ("fused", fused)):
        prng.bernoulli = bernoulli  # what fusion.Dropout calls while the step is traced
        try:
            step = steps.make_train_step(
                loss_fn, tx, config.model.ema_rate, jax.random.key(0), ss, bs
            )
            compiled[name] = step.compile_ahead(abstract, batch)
        finally:
            prng.bernoulli = fused
        text = compiled[name]._compiled.as_text()
        instructions[name] = sum(1 for line in text.split("\n") if " = " in line)
    state = {
        n: jax.device_put(score_model.init_train_state(config, model, tx, jax.random.key(0)), ss)
        for n in compiled
    }
    x = jax.device_put(jax.random.uniform(jax.random.key(2), (1, 8, 32, 32, 3)), bs)

    def run(n):
        state[n], metrics = compiled[n](state[n], x)
        return metrics["loss"]

    median, times = _common.interleaved({n: (lambda n=n: run(n)) for n in compiled}, repeats)
    diff = max(
        jax.tree.leaves(
            jax.tree.map(
                lambda a, b: float(jnp.max(jnp.abs(a - b))), state["jax"].params,
                state["fused"].params,
            )
        )
    )  # fmt: skip
    ratio = median["fused"] / median["jax"]
    print(f"{model_name} train step: jax masks {median['jax']:.3f} s, fused {median['fused']:.3f} s, "
          f"ratio {ratio:.3f}; max |params difference| {diff}; HLO instructions "
          f"{instructions['jax']} -> {instructions['fused']}")  # fmt: skip
    return {"model": model_name, "median_s": median, "ratio": ratio, "times_s": times,
            "max_params_difference": diff, "hlo_instructions": instructions}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_step", action="store_true")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="ddpmpp")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--step_repeats", type=int, default=8)
    args = parser.parse_args()
    result = {"masks": masks(args.repeats)}
    if args.train_step:
        result["train_step"] = train_step(args.model, args.step_repeats)
    _common.write_result("dropout_masks", result)


if __name__ == "__main__":
    main()
