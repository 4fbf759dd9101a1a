"""Training and sampling throughput on this machine, with peak RSS.

Training: images/s of the jitted train step (`training.steps.make_train_step`) for the tiny DDPM++
test config and the full CIFAR-10 DDPM++ config, with `n_jitted_steps` 1 and 5 (on CPU the
fused steps are unrolled, see training/steps.py). Sampling: images/s and NFE of the PC sampler (EM) and
the probability-flow ODE sampler (Dopri5) for the tiny config. Writes
bench/results/train_throughput.json. The paper's reference is 0.30 s/step for NCSN++ cont. at
batch 128 on 4 V100 (README of score_sde).

    python bench/train_throughput.py [--full_batch 8] [--skip_full]
"""

import argparse
import resource
import time

import _common
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import losses
import sampling
from configs.testing import ddpmpp_tiny
from configs.vp import cifar10_ddpmpp_continuous
from models import utils as mutils
from training import devices, score_model, steps


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_rate(config, n_jitted, batch, repeats):
    config.training.batch_size = batch
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    sde, _ = score_model.sde_from_config(config)
    mesh = devices.make_mesh()
    ss, bs = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
    step = steps.make_train_step(
        score_model.score_loss_fn(config, sde, model, train=True), tx, 0.999, jax.random.key(0),
        ss, bs,
    )  # fmt: skip
    state = score_model.init_train_state(config, model, tx, jax.random.key(0))
    state = jax.device_put(state, ss)
    size, ch = config.data.image_size, config.data.num_channels
    x = jax.device_put(jax.random.uniform(jax.random.key(1), (n_jitted, batch, size, size, ch)), bs)
    t0 = time.perf_counter()
    state, loss = step(state, x)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, loss = step(state, x)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    per_call = sorted(times)[len(times) // 2]
    return dict(
        compile_s=compile_s,
        s_per_step=per_call / n_jitted,
        images_per_s=n_jitted * batch / per_call,
        params=int(sum(p.size for p in jax.tree.leaves(state.params))),
    )


def sampling_rate(config, batch, repeats):
    config.eval.batch_size = batch
    model = mutils.get_model(config)
    sde, eps = score_model.sde_from_config(config)
    params = score_model.init_params(config, model, jax.random.key(0))
    shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    rows = {}
    for method in ("pc", "ode"):
        config.sampling.method = method
        fn = sampling.get_sampling_fn(config, sde, model, shape, lambda x: x, eps)
        x, nfe = fn(jax.random.key(0), params)
        jax.block_until_ready(x)
        med, _ = _common.median_time(
            lambda k, f=fn: f(k, params)[0], jax.random.key(1), repeats=repeats, warmup=0
        )
        rows[method] = dict(images_per_s=batch / med, nfe=int(nfe), s_per_batch=med)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny_batch", type=int, default=64)
    parser.add_argument("--full_batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_full", action="store_true")
    parser.add_argument(
        "--full_jitted", type=int, nargs="+", default=[1], help="n_jitted_steps for the full model"
    )
    args = parser.parse_args()
    rows = []
    for n_jitted in (1, 5):
        r = train_rate(ddpmpp_tiny.get_config(), n_jitted, args.tiny_batch, args.repeats)
        rows.append(
            dict(config="testing/ddpmpp_tiny", n_jitted_steps=n_jitted, batch=args.tiny_batch, **r)
        )
        print(rows[-1], flush=True)
    if not args.skip_full:
        # The full model with 5 unrolled steps takes ~5x the (minutes long) CPU compilation of
        # one step, so by default only n_jitted_steps=1 (--full_jitted 1 5 for both); on
        # accelerators the fused steps are a lax.scan and compile once.
        for n_jitted in args.full_jitted:
            r = train_rate(cifar10_ddpmpp_continuous.get_config(), n_jitted, args.full_batch, 2)
            rows.append(
                dict(
                    config="vp/cifar10_ddpmpp_continuous",
                    n_jitted_steps=n_jitted,
                    batch=args.full_batch,
                    **r,
                )
            )
            print(rows[-1], flush=True)
    samp = sampling_rate(ddpmpp_tiny.get_config(), args.tiny_batch, args.repeats)
    print(samp)
    _common.write_result(
        "train_throughput",
        {
            "args": vars(args),
            "train": rows,
            "sampling_tiny": samp,
            "peak_rss_mib": peak_rss_mib(),
            "paper_reference": "0.30 s/step, NCSN++ cont. VE, batch 128, 4x V100 (JAX, n_jitted=1)",
        },
    )


if __name__ == "__main__":
    main()
