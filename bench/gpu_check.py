"""A one-GPU check of the paper's CIFAR-10 models, in under 10 minutes.

    python bench/gpu_check.py                 # one GPU: the full models at batch 128
    python bench/gpu_check.py --tiny          # CPU smoke test with tiny models (the tests run it)
    python bench/gpu_check.py --workdir_ve W1 --workdir_vp W2   # trained EMA params for the ODE

Prints, for NCSN++ cont. (VE, `ve/cifar10_ncsnpp_continuous`) and DDPM++ cont. (VP,
`vp/cifar10_ddpmpp_continuous`):
  * train-step time and images/s at batch 128, `n_jitted_steps` 1 and 5 (5 = the `lax.scan`
    branch on accelerators; `SCORE_SDE_LOOPS` picks the branch), float32 and bfloat16
    activations (`training.compute_dtype`);
  * peak device memory (XLA's `peak_bytes_in_use`, which only grows: the value after each row);
  * the PC sampler (reverse diffusion + Langevin for VE, Euler-Maruyama for VP) at N = 1000,
    batch 128: `--pc_steps` (default 50) noise levels are timed in one jitted `fori_loop` and
    images/s is extrapolated to the N = 1000 levels of a full run (NFE = 2000 / 1000);
  * the probability-flow ODE sampler (Dopri5, rtol = atol = 1e-5): its NFE and images/s. With
    random weights (no --workdir_*) the NFE is not that of a trained model (NCSN++ / DDPM++
    start with a zero output layer, so the flow is nearly linear and cheap).
and the paper's reference beside them: 0.30 s/step for NCSN++ cont. at batch 128 on 4 V100s.

Rows run in priority order and stop when `--budget_s` (default 540 s, compilation included) is
spent; skipped rows are listed. Results go to bench/results/gpu_check_<backend>.json
(`--tiny`: gpu_check_<backend>_tiny.json, or --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import losses  # noqa: E402
import sampling  # noqa: E402
import utils  # noqa: E402
from configs.testing import ddpmpp_tiny, ncsnpp_tiny  # noqa: E402
from configs.ve import cifar10_ncsnpp_continuous  # noqa: E402
from configs.vp import cifar10_ddpmpp_continuous  # noqa: E402
from models import utils as mutils  # noqa: E402
from training import devices, score_model, steps  # noqa: E402

PAPER_REFERENCE = {
    "model": "ncsnpp_cont_ve",
    "s_per_step": 0.30,
    "batch": 128,
    "hardware": "4x V100",
    "source": "yang-song/score_sde README (JAX, NCSN++ cont., CIFAR-10)",
}
MODELS = {
    "ncsnpp_cont_ve": (cifar10_ncsnpp_continuous, ncsnpp_tiny),
    "ddpmpp_cont_vp": (cifar10_ddpmpp_continuous, ddpmpp_tiny),
}


# Train rows (n_jitted_steps, activation dtype) in priority order; PC and ODE rows follow the
# first (float32, one step per call).
TRAIN_VARIANTS = ((1, "float32"), (1, "bfloat16"), (5, "float32"), (5, "bfloat16"))


def model_config(name: str, tiny: bool):
    full, small = MODELS[name]
    config = (small if tiny else full).get_config()
    if tiny:  # 8x8 images, one resolution: seconds on CPU
        config.data.image_size = 8
        config.model.ch_mult = (1,)
        config.model.attn_resolutions = (8,)
    return config


def peak_memory_bytes() -> int | None:
    """XLA's peak device memory so far (None where the backend has no statistics, e.g. CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _timed(fn, calls: int):
    """(first call seconds = compilation + one run, median of `calls` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, sorted(times)[len(times) // 2]


def train_row(name, tiny, batch, n_jitted, dtype, calls):
    config = model_config(name, tiny)
    config.training.batch_size, config.training.n_jitted_steps = batch, n_jitted
    config.training.compute_dtype = dtype
    model, tx = mutils.get_model(config), losses.get_optimizer(config)
    sde, _ = score_model.sde_from_config(config)
    mesh = devices.make_mesh()
    state_sharding, batch_sharding = devices.replicated(mesh), devices.batch_sharding(mesh, True)
    step = steps.make_train_step(
        score_model.score_loss_fn(config, sde, model, train=True), tx, config.model.ema_rate,
        jax.random.key(0), state_sharding, batch_sharding,
    )  # fmt: skip
    state = score_model.init_train_state(config, model, tx, jax.random.key(0))
    holder = {"state": jax.device_put(state, state_sharding)}
    size, channels = config.data.image_size, config.data.num_channels
    x = jax.random.uniform(jax.random.key(1), (n_jitted, batch, size, size, channels)) * 2 - 1
    x = jax.device_put(x, batch_sharding)

    def call():
        holder["state"], metrics = step(holder["state"], x)
        return metrics

    compile_s, per_call = _timed(call, calls)
    return {
        "s_per_step": per_call / n_jitted,
        "images_per_s": n_jitted * batch / per_call,
        "compile_and_first_call_s": compile_s,
        "device_loop": utils.device_loops(),
        "params": utils.count_params(state.params),
    }


def _params(name, config, model, workdir):
    if workdir:
        return score_model.restore_score_params(config, workdir, model)[0]
    return score_model.init_params(config, model, jax.random.key(0))


def pc_row(name, tiny, batch, n_timed, dtype, workdir=None):
    """The PC sampler at the config's N (1000 for the full models): `n_timed` noise levels."""
    config = model_config(name, tiny)
    if not tiny:
        config.model.num_scales = 1000
    model = mutils.get_model(config)
    sde, eps = score_model.sde_from_config(config)
    params = _params(name, config, model, workdir)
    s = config.sampling
    score_fn = mutils.get_score_fn(
        sde, model, params, continuous=True, dtype=mutils.compute_dtype(dtype)
    )
    updates, nfe = sampling.check_pc(sde, s.predictor, s.corrector, False, s.n_steps_each)
    body = functools.partial(
        sampling.pc_step, key=jax.random.key(2), sde=sde, score_fn=score_fn, updates=updates,
        snr=s.snr, n_steps=s.n_steps_each, probability_flow=False, eps=eps, sharding=None,
    )  # fmt: skip
    n_timed = min(n_timed, sde.N)
    size, channels = config.data.image_size, config.data.num_channels
    x = sde.prior_sampling(jax.random.key(3), (batch, size, size, channels))
    run = jax.jit(lambda x: jax.lax.fori_loop(0, n_timed, body, (x, x))[0])
    compile_s, wall = _timed(lambda: run(x), 2)
    per_level = wall / n_timed
    return {
        "predictor": s.predictor,
        "corrector": s.corrector,
        "N": sde.N,
        "nfe": nfe,
        "levels_timed": n_timed,
        "s_per_level": per_level,
        "images_per_s": batch / (per_level * sde.N),
        "compile_and_first_call_s": compile_s,
    }


def ode_row(name, tiny, batch, workdir=None):
    config = model_config(name, tiny)
    config.sampling.method = "ode"
    model = mutils.get_model(config)
    sde, eps = score_model.sde_from_config(config)
    params = _params(name, config, model, workdir)
    shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    fn = sampling.get_sampling_fn(config, sde, model, shape, lambda x: x, eps)
    holder = {}

    def call():
        holder["x"], holder["nfe"] = fn(jax.random.key(4), params)
        return holder["x"]

    compile_s, wall = _timed(call, 1)
    return {
        "nfe": int(holder["nfe"]),
        "images_per_s": batch / wall,
        "s_per_batch": wall,
        "trained_weights": bool(workdir),
        "compile_and_first_call_s": compile_s,
    }


def plan(args):
    """(label, function) in priority order: the rows a person needs most come first."""
    b, calls = args.batch, args.calls
    ve, vp = "ncsnpp_cont_ve", "ddpmpp_cont_vp"
    wd = {ve: args.workdir_ve, vp: args.workdir_vp}
    rows = []
    keep = lambda name: name in args.models
    for n_jitted, dtype in TRAIN_VARIANTS:
        if f"{n_jitted}:{dtype}" in args.train:
            for name in filter(keep, (ve, vp)):
                rows.append((("train", name, n_jitted, dtype), functools.partial(
                    train_row, name, args.tiny, b, n_jitted, dtype, calls)))  # fmt: skip
        if (n_jitted, dtype) == TRAIN_VARIANTS[0]:
            for name in filter(keep, (ve, vp)):
                rows.append((("pc", name, args.pc_steps, "float32"), functools.partial(
                    pc_row, name, args.tiny, b, args.pc_steps, "float32", wd[name])))  # fmt: skip
            for name in filter(keep, (vp, ve)):
                rows.append((("ode", name, 0, "float32"),
                             functools.partial(ode_row, name, args.tiny, b, wd[name])))  # fmt: skip
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke test)")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (--tiny: 8)")
    parser.add_argument("--calls", type=int, default=5, help="timed train calls per row")
    parser.add_argument("--pc_steps", type=int, default=50, help="PC noise levels timed")
    parser.add_argument("--budget_s", type=float, default=540.0)
    parser.add_argument("--workdir_ve", default="", help="trained NCSN++ cont. workdir")
    parser.add_argument("--workdir_vp", default="", help="trained DDPM++ cont. workdir")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    variants = [f"{n}:{dtype}" for n, dtype in TRAIN_VARIANTS]
    parser.add_argument("--train", nargs="+", default=variants, choices=variants,
                        help="train rows, n_jitted_steps:dtype")  # fmt: skip
    parser.add_argument("--out", default="", help="result JSON (default bench/results/...)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (8 if args.tiny else 128)
    if args.tiny:
        args.calls, args.pc_steps = min(args.calls, 2), min(args.pc_steps, 3)
    start, results, skipped = time.perf_counter(), [], []
    backend = jax.default_backend()
    print(f"gpu_check: {backend} {jax.devices()[0].device_kind}, batch {args.batch}, "
          f"{'tiny models' if args.tiny else 'CIFAR-10 models'}; paper: 0.30 s/step "
          "(NCSN++ cont., batch 128, 4x V100)", flush=True)  # fmt: skip
    for (kind, name, n, dtype), fn in plan(args):
        label = f"{kind:5s} {name:15s} {'n_jitted=' + str(n) if kind == 'train' else ''} {dtype}"
        if time.perf_counter() - start > args.budget_s:
            skipped.append(label)
            continue
        row = {"kind": kind, "model": name, "dtype": dtype, **fn()}
        if kind == "train":
            row["n_jitted_steps"] = n
        row["peak_device_memory_bytes"] = peak_memory_bytes()
        results.append(row)
        print(_line(label, row), flush=True)
    if skipped:
        print(f"Skipped (over --budget_s {args.budget_s:.0f} s): {skipped}")
    payload = {
        "backend": backend,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "rows": results,
        "skipped": skipped,
        "peak_device_memory_bytes": peak_memory_bytes(),
        "peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "total_s": time.perf_counter() - start,
        "paper_reference": PAPER_REFERENCE,
    }
    suffix = "_tiny" if args.tiny else ""
    out = pathlib.Path(args.out or ROOT / "bench" / "results" / f"gpu_check_{backend}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out} ({payload['total_s']:.0f} s)")
    return payload


def _line(label: str, row: dict) -> str:
    memory = row["peak_device_memory_bytes"]
    mem = f", peak {memory / 2**30:.2f} GiB" if memory else ""
    if row["kind"] == "train":
        ref = (f" (paper {PAPER_REFERENCE['s_per_step']:.2f} s/step on 4x V100)"
               if row["model"] == PAPER_REFERENCE["model"] else "")  # fmt: skip
        return (f"{label}: {row['s_per_step']:.4f} s/step{ref}, {row['images_per_s']:.1f} "
                f"images/s, compile {row['compile_and_first_call_s']:.0f} s{mem}")  # fmt: skip
    if row["kind"] == "pc":
        return (f"{label}: N={row['N']} (NFE {row['nfe']}), {row['s_per_level']:.4f} s/level over "
                f"{row['levels_timed']} levels -> {row['images_per_s']:.2f} images/s{mem}")  # fmt: skip
    return (f"{label}: NFE {row['nfe']}, {row['images_per_s']:.2f} images/s"
            f"{'' if row['trained_weights'] else ' (random weights)'}{mem}")  # fmt: skip


if __name__ == "__main__":
    main()
