"""The tutorial's VE SDE `dx = sigma^t dw` on Fashion-MNIST: Euler-Maruyama vs Platen vs SRA1.

A seed write-up asked how Euler-Maruyama compares with Platen's strong order 1.0 scheme (the
derivative-free Milstein method) for time and sample quality. For these SDEs the noise is
additive (g depends on t only), Platen's correction `[g(x + g sqrt h) - g(x)] (dW^2 - h) /
(2 sqrt h)` is exactly 0, and Platen *is* Euler-Maruyama: same samples for the same key, same
cost. SRA1 (strong order 1.5 for additive noise, 2 NFE per step) is the scheme that does differ.
Compared at equal NFE (EM and Platen: N = NFE steps; SRA1: N = NFE / 2), per sigma:
time per sample and fd in the offline Fashion-MNIST feature space (the extractor of `make demo`).

    python bench/tutorial_sde.py --sigmas 25,50 --workdir_prefix runs/tutorial_sigma \\
        --extractor runs/extractor [--nfe 50,100,200] [--num_samples 256]

Trains a model per sigma (configs/tutorial/fashion_mnist_sigma<sigma>.py) where the workdir has
no checkpoint; each finished cell is cached in `<workdir>/bench_tutorial_sde.json`, so a killed
run resumes; the report shows every cached cell of the current checkpoints, so a sigma may be
run with fewer NFE budgets than another. Writes bench/results/tutorial_sde.{json,md,png}.
"""

import argparse
import hashlib
import importlib
import json
import os
import time

import _common
import jax
import numpy as np

import datasets
import evaluation
import fileio
import run_lib
import sampling
import sde_lib
import utils
from models import feature_extractor
from models import utils as mutils
from training import checkpoints, sample_eval, score_model

# Scheme -> (predictor, score evaluations per step).
SCHEMES = {"euler_maruyama": ("euler_maruyama", 1), "platen": ("platen", 1), "sra1": ("sra1", 2)}
LABELS = {"euler_maruyama": "Euler-Maruyama", "platen": "Platen (order 1.0)", "sra1": "SRA1"}


def _config(sigma: int):
    module = importlib.import_module(f"configs.tutorial.fashion_mnist_sigma{sigma}")
    return module.get_config()


def _model(config, workdir: str, n_iters: int | None):
    """EMA params of the newest checkpoint, training one first when the workdir has none."""
    manager = checkpoints.checkpoint_manager(workdir, config.training.snapshot_freq)
    have = checkpoints.saved_steps(manager)
    manager.close()
    if not have:
        if n_iters:
            config.training.n_iters = n_iters
        print(f"training {workdir} for {config.training.n_iters} steps", flush=True)
        run_lib.train(config, workdir)
    model = mutils.get_model(config)
    params, step = score_model.restore_score_params(config, workdir, model)
    return model, params, int(step)


def _cell(config, model, params, scheme: str, nfe: int, num_samples: int, batch: int, key):
    """Samples `num_samples` images with `scheme` at `nfe` score evaluations; uint8 and timing."""
    predictor, per_step = SCHEMES[scheme]
    sde = sde_lib.TutorialVESDE(sigma=config.model.sigma, N=nfe // per_step)
    score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=True)
    size, channels = config.data.image_size, config.data.num_channels
    sampler = sampling.get_pc_sampler(
        sde, score_fn, (batch, size, size, channels), predictor, "none", eps=1e-3,
        inverse_scaler=datasets.get_data_inverse_scaler(config),
    )  # fmt: skip
    out, times = [], []
    for b in range(num_samples // batch):
        t0 = time.perf_counter()
        x, used = sampler(jax.random.fold_in(key, b))  # the same keys for every scheme
        x = np.asarray(jax.block_until_ready(x))
        times.append(time.perf_counter() - t0)
        out.append(utils.to_uint8(np.clip(x, 0.0, 1.0)))
    assert used == nfe, (scheme, used, nfe)
    samples = np.concatenate(out)
    # The first batch includes compilation: time per sample from the others, the fastest one
    # (the machine is shared; the minimum is the least disturbed measurement).
    per_sample = float(np.min(times[1:])) / batch
    return samples, {"nfe": nfe, "steps": sde.N, "seconds_per_sample": per_sample,
                     "compile_s": times[0] - per_sample * batch,
                     "samples_sha1": hashlib.sha1(samples.tobytes()).hexdigest()}  # fmt: skip


def _run_sigma(args, sigma: int, extractor):
    config = _config(sigma)
    workdir = f"{args.workdir_prefix}{sigma}"
    model, params, step = _model(config, workdir, args.train_steps)
    cache_path = os.path.join(workdir, "bench_tutorial_sde.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    data = sample_eval.reference_images(config, args.num_samples)
    key = jax.random.key(args.seed)
    for nfe in args.nfe:
        for scheme in SCHEMES:
            name = f"{scheme}@{nfe}"
            if name in cache and cache[name]["checkpoint_step"] == step:
                continue
            samples, row = _cell(config, model, params, scheme, nfe, args.num_samples,
                                 args.batch, key)  # fmt: skip
            metrics = evaluation.compute_offline_metrics(
                extractor.features, data, samples, extractor.name
            )
            row.update(scheme=scheme, sigma=sigma, checkpoint_step=step, **metrics)
            if scheme == "platen":  # the same key: the same uint8 samples?
                em_hash = cache[f"euler_maruyama@{nfe}"]["samples_sha1"]
                row["identical_to_euler_maruyama"] = row["samples_sha1"] == em_hash
            cache[name] = row
            fileio.write_text_atomic(cache_path, json.dumps(cache, indent=2))
            print(name, {k: v for k, v in row.items() if k not in ("scheme", "sigma")}, flush=True)
            if scheme == "sra1" and nfe == max(args.nfe):
                grid = utils.image_grid(samples[:64])
                utils.save_png(grid, os.path.join(workdir, f"samples_sra1_{nfe}.png"))
    # Every cell of this checkpoint, also NFE budgets of earlier runs (so a sigma can be run
    # with fewer budgets than another and the report still shows all of them).
    rows = [r for r in cache.values() if r["checkpoint_step"] == step]
    order = list(SCHEMES)
    return step, sorted(rows, key=lambda r: (r["nfe"], order.index(r["scheme"])))


def _markdown(rows, steps, reference, name, num_samples) -> str:
    fd = f"fd_{name}"
    lines = [
        "| sigma (train steps) | scheme | NFE | steps | fd | s / sample |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = " (= EM)" if r.get("identical_to_euler_maruyama") else ""
        lines.append(
            f"| {r['sigma']} ({steps[r['sigma']]}) | {LABELS[r['scheme']]}{same} | {r['nfe']} | "
            f"{r['steps']} | {r[fd]:.1f} | {r['seconds_per_sample'] * 1e3:.1f} ms |"
        )
    lines.append(
        f"\n{num_samples} samples per cell; fd_{name} of {num_samples} test images against the "
        f"same training images: {reference:.1f}."
    )
    return "\n".join(lines) + "\n"


def _figure(rows, name, path):
    fig = utils.new_figure((10, 4))
    ax_fd, ax_t = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # Colour per scheme, line style per sigma; Platen is drawn over EM (x markers).
    styles = {"euler_maruyama": ("C0", "o", 7), "platen": ("C1", "x", 10), "sra1": ("C2", "s", 6)}
    for sigma, line in zip(sorted({r["sigma"] for r in rows}), ("-", ":", "--")):
        for scheme, (color, marker, size) in styles.items():
            sel = [r for r in rows if r["sigma"] == sigma and r["scheme"] == scheme]
            nfe = [r["nfe"] for r in sel]
            kw = dict(color=color, marker=marker, ms=size, ls=line)
            label = f"sigma {sigma}: {LABELS[scheme]}"
            ax_fd.plot(nfe, [r[f"fd_{name}"] for r in sel], label=label, **kw)
            ax_t.plot(nfe, [r["seconds_per_sample"] * 1e3 for r in sel], **kw)
    ax_fd.set(xscale="log", yscale="log", xlabel="NFE", ylabel=f"fd_{name}")
    ax_fd.set_title("quality (Platen = Euler-Maruyama exactly)")
    ax_t.set(xscale="log", xlabel="NFE", ylabel="ms per sample")
    ax_t.set_title("time per sample")
    ax_fd.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sigmas", default="25,50")
    parser.add_argument("--workdir_prefix", default="runs/tutorial_sigma")
    parser.add_argument("--extractor", default="runs/extractor")
    parser.add_argument("--nfe", default="50,100,200")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train_steps", type=int, default=None, help="if a model is trained")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.nfe = [int(v) for v in args.nfe.split(",")]
    if (
        any(n % 2 for n in args.nfe)
        or args.num_samples % args.batch
        or args.num_samples < 2 * args.batch
    ):
        raise SystemExit(
            "--nfe must be even (SRA1: 2 per step); --num_samples a multiple of --batch, >= 2 "
            "batches (the first one, with compilation, is not timed)"
        )
    utils.quiet_library_logs()
    extractor = feature_extractor.load(args.extractor)
    rows, steps = [], {}
    for sigma in (int(s) for s in args.sigmas.split(",")):
        steps[sigma], sigma_rows = _run_sigma(args, sigma, extractor)
        rows += sigma_rows
    # Reference: real test images against the same training images.
    config = _config(int(args.sigmas.split(",")[0]))
    data = sample_eval.reference_images(config, args.num_samples)
    with config.unlocked():
        config.eval.batch_size = args.num_samples
    _, test_ds, _ = datasets.get_dataset(config, evaluation=True)
    test = utils.to_uint8(next(iter(test_ds))["image"])
    reference = evaluation.compute_offline_metrics(extractor.features, data, test, extractor.name)
    ref_fd = reference[f"fd_{extractor.name}"]
    out = _common.RESULTS / "tutorial_sde"
    result = {
        "bench": "tutorial_sde",
        "num_samples": args.num_samples,
        "train_steps": steps,
        "reference_test_vs_train": reference,
        "rows": rows,
        "environment": _common.environment(),
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = _markdown(rows, steps, ref_fd, extractor.name, args.num_samples)
    out.with_suffix(".md").write_text(text)
    _figure(rows, extractor.name, str(out.with_suffix(".png")))
    print(text)


if __name__ == "__main__":
    main()
