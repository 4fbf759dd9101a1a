"""Controllable-generation overhead: wall time of the conditional sampler, the inpainter and the
colorizer relative to the unconditional PC sampler at the same NFE (same score network, same
predictor / corrector, same number of steps).

  * Conditional sampling adds one classifier gradient per score evaluation, so its ratio should
    be close to `1 + t(classifier grad) / t(score)` (printed as `expected`).
  * Inpainting / colorization add only the imputation (a noise draw and a blend per update):
    the target ratio is <= 1.10.

Score: the small conv net of bench/_common.py; classifier: a small noise-conditional WRN
(random init). The timings are interleaved (round robin over the samplers, then over the two
networks), so that load from other processes hits every case alike. The conditional sampler's
loop runs on device unless `SCORE_SDE_LOOPS=host` (recorded as `loops`). Writes
bench/results/conditional_overhead.json.

    python bench/conditional_overhead.py [--batch 16] [--size 32] [--steps 100]
"""

import argparse

import _common
import jax
import jax.numpy as jnp

import controllable_generation as cg
import sampling
import sde_lib
import utils
from experiments import controllable as cl
from models import wideresnet_noise_conditional as wrn


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="channels of the conv score net")
    parser.add_argument("--wrn_depth", type=int, default=10)
    parser.add_argument("--wrn_width", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    shape = (args.batch, args.size, args.size, 3)
    sde = sde_lib.VESDE(N=args.steps)
    score_fn = _common.conv_score_fn(
        sde, jax.random.key(0), channels=(3, args.width, args.width, 3)
    )
    classifier = wrn.WideResnet(depth=args.wrn_depth, widen_factor=args.wrn_width, num_classes=10)
    params = jax.jit(classifier.init)(jax.random.key(1), jnp.zeros((1, *shape[1:])), jnp.ones(1))
    grad_fn = cg.get_classifier_grad_fn(cg.get_logit_fn(classifier, params["params"], sde))

    # One evaluation of each network, to predict the conditional sampler's ratio.
    x = jax.random.normal(jax.random.key(2), shape)
    t = jnp.full((args.batch,), 0.5)
    labels = jnp.arange(args.batch) % 10
    score_jit, grad_jit = jax.jit(score_fn), jax.jit(grad_fn)
    nets = {"score": lambda: score_jit(x, t), "grad": lambda: grad_jit(x, t, labels)}
    net_s, _ = _common.interleaved(nets, repeats=20, warmup=2)
    score_s, grad_s = net_s["score"], net_s["grad"]

    pc = ("reverse_diffusion", "langevin")
    plain = sampling.get_pc_sampler(sde, score_fn, shape, *pc)
    conditional = cg.get_pc_conditional_sampler(sde, score_fn, grad_fn, shape, *pc)
    inpainter = cg.get_pc_inpainter(sde, score_fn, *pc)
    colorizer = cg.get_pc_colorizer(sde, score_fn, *pc)
    data = jax.random.uniform(jax.random.key(3), shape)
    mask = cl.get_mask("half", None, shape)
    gray = jnp.repeat(data.mean(-1, keepdims=True), 3, axis=-1)
    runs = {
        "unconditional": lambda k: plain(k),
        "conditional": lambda k: conditional(k, labels),
        "inpaint": lambda k: inpainter(k, data, mask),
        "colorize": lambda k: colorizer(k, gray),
    }
    nfe = {name: int(fn(jax.random.key(4))[1]) for name, fn in runs.items()}
    assert len(set(nfe.values())) == 1, nfe
    key = jax.random.key(5)
    wall, _ = _common.interleaved(
        {n: (lambda fn=fn: fn(key)[0]) for n, fn in runs.items()}, args.repeats
    )
    base = wall["unconditional"]
    ratios = {name: wall[name] / base for name in runs if name != "unconditional"}
    expected = 1.0 + grad_s / score_s
    for name in runs:
        print(
            f"{name:14s} nfe {nfe[name]:5d} wall {wall[name]:8.3f}s  ratio {wall[name] / base:.3f}"
        )
    print(
        f"score eval {score_s * 1e3:.3f} ms, classifier grad {grad_s * 1e3:.3f} ms: "
        f"expected conditional ratio {expected:.3f}"
    )
    _common.write_result(
        "conditional_overhead",
        {
            "args": vars(args),
            "loops": "device" if utils.device_loops() else "host",
            "nfe": nfe["unconditional"],
            "wall_s": wall,
            "ratios": ratios,
            "score_eval_s": score_s,
            "classifier_grad_s": grad_s,
            "expected_conditional_ratio": expected,
            "target_imputation_ratio": 1.10,
        },
    )


if __name__ == "__main__":
    main()
