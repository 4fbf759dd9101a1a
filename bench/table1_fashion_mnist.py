"""The paper's Table 1 procedure on Fashion-MNIST: VE (SMLD) and VP (DDPM) models, CPU scale.

Trains nothing: run the two trainings and the feature extractor first (README, "Table 1 on
Fashion-MNIST"). Then

    python bench/table1_fashion_mnist.py --ve_workdir runs/t1_ve --vp_workdir runs/t1_vp \
        --extractor runs/extractor [--columns P50,P100,C100,PC50 --repeats 3]

1. checks that the models' probability flow stays in range: the fraction of pixels outside
   [0, 1] (and far outside, [-0.5, 1.5]) of `--flow_samples` samples of the probability-flow
   predictor at the largest P column and (VP) of Dopri5 (rtol = atol = 1e-5), beside the
   reverse diffusion SDE sampler as a reference;
2. runs the Table 1 sweep with the paper's semantics (C<N> = N / 2 levels x 2 Langevin steps,
   Table 5 snr preset by column kind, 'linear' label map for N != 1000, `--repeats` seeds per
   cell) on both models in one grid (VP is the main run, VE an extra run), offline fd / kid;
3. copies the sweep's results.csv and table1.md to bench/results/table1_fashion_mnist.{csv,md},
   draws table1_fashion_mnist.png (bars with +- std) and writes table1_fashion_mnist.json.

Each cell is resumable (the sweep stores finished cells), so an interrupted run continues.
"""

import argparse
import json
import os
import shutil
import time

import _common
import jax
import numpy as np
from absl import logging

import utils
from configs.demo import fashion_mnist_ddpm_table1, fashion_mnist_smld_table1
from experiments import sweep, sweep_grid, sweep_report, sweep_spec
from training import devices

VE_CONFIG = "configs/demo/fashion_mnist_smld_table1.py"
ROW_COLORS = {"ancestral_sampling": "C0", "reverse_diffusion": "C1", "probability_flow": "C2"}


def table1_config(args):
    """The VP config with the Table 1 grid over both runs (VE through `sweep.runs`)."""
    config = fashion_mnist_ddpm_table1.get_config()
    config.eval.feature_extractor_path = os.path.abspath(args.extractor)
    config.eval.inception_path = "none"
    s = config.sweep
    s.columns = tuple(args.columns.split(","))
    s.runs = (f"VE={VE_CONFIG}:{os.path.abspath(args.ve_workdir)}",)
    s.repeats, s.num_samples, s.batch_size = args.repeats, args.num_samples, args.batch_size
    s.metrics, s.ckpt = ("fd", "kid"), args.ckpt
    return config


def flow_check(spec, run, args) -> dict:
    """Out-of-range pixel fractions of the probability flow (and the reverse SDE) for a run."""
    ctx = sweep.load_run(run, spec)
    p_columns = [c for c in spec.columns if sweep_spec.parse_column(c)[0] == "P"]
    column = max(p_columns, key=lambda c: sweep_spec.parse_column(c)[1])
    samplers = {
        f"probability flow {column}": sweep_grid.table1_cell(run, "probability_flow", column, spec),
        f"reverse diffusion {column}": sweep_grid.table1_cell(
            run, "reverse_diffusion", column, spec
        ),
    }
    # The ODE sampler queries every model as a continuous one (as the original): a discrete VE
    # network would get sigma(t) where it expects level indices, so it is checked on VP only.
    if run.config.training.sde != "vesde" or run.config.training.continuous:
        samplers["probability flow, Dopri5 1e-5"] = sweep_grid.nfe_cell(run, "ode", None)
    size, channels = run.config.data.image_size, run.config.data.num_channels
    shape = (args.flow_samples, size, size, channels)
    out = {"ckpt_step": ctx.step}
    for name, cell in samplers.items():
        fn = sweep.build_sampling_fn(run.config, cell, ctx.model, shape)
        start = time.time()
        x, nfe = jax.block_until_ready(fn(jax.random.key(0), ctx.params))
        x = np.asarray(x)  # inverse-scaled to [0, 1] data units, not clipped
        out[name] = {
            "outside_0_1": float(np.mean((x < 0) | (x > 1))),
            "outside_-0.5_1.5": float(np.mean((x < -0.5) | (x > 1.5))),
            "max_abs": float(np.max(np.abs(x))),
            "nfe": int(nfe),
            "wall_s": time.time() - start,
        }
        logging.info("%s %s: %s", run.label, name, out[name])
    return out


def plot(aggregates: dict, spec, path) -> None:
    """Two panels (VP, VE): bars per column and row, +- std over the repeats."""
    fig = utils.new_figure((10, 4))
    runs = ("VE", "VP")
    metric = sweep_report.primary_metric(list(aggregates.values()))
    for k, run in enumerate(runs):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, column in enumerate(spec.columns):
            shared = sweep_spec.parse_column(column)[0] == "C"
            rows = ("corrector",) if shared else spec.rows
            for i, row in enumerate(rows):
                cell_id = sweep_grid.Cell(run, "table1", row, column, "pc", ()).cell_id
                agg = aggregates.get(cell_id)
                if agg is None or metric not in agg["metrics"]:
                    continue
                x = j + (0 if shared else (i - 1) * 0.27)
                color = "gray" if shared else ROW_COLORS.get(row, "k")
                label = "corrector only" if shared else sweep_spec.ROW_TITLES[row]
                ax.bar(x, agg["metrics"][metric], width=0.5 if shared else 0.26,
                       yerr=agg["metrics_std"][metric], capsize=2, color=color, label=label)  # fmt: skip
        ax.set_xticks(range(len(spec.columns)), spec.columns)
        ax.set_yscale("log")
        ax.set_title(f"{run} (lower is better)", fontsize=9)
        ax.set_ylabel(metric)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.92, wspace=0.25)
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ve_workdir", default="runs/t1_ve")
    parser.add_argument("--vp_workdir", default="runs/t1_vp")
    parser.add_argument("--extractor", default="runs/extractor")
    parser.add_argument("--columns", default="P50,P100,C100,PC50")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--ckpt", type=int, default=-1)
    parser.add_argument("--flow_samples", type=int, default=64)
    parser.add_argument("--name", default="table1_fashion_mnist")
    parser.add_argument("--flow_only", action="store_true", help="Only the flow check.")
    args = parser.parse_args()
    logging.set_verbosity(logging.INFO)
    config = table1_config(args)
    spec = sweep_spec.get_sweep_spec(config)
    runs = sweep_grid.get_runs(config, args.vp_workdir, spec)
    devices.check_batch_size(args.flow_samples, "--flow_samples")
    checks = {label: flow_check(spec, run, args) for label, run in runs.items()}
    print(json.dumps(checks, indent=1))
    if args.flow_only:
        return
    start = time.time()
    records = sweep.run_sweep(config, args.vp_workdir)
    out = os.path.join(args.vp_workdir, "sweep")
    results = _common.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(out, "results.csv"), results / f"{args.name}.csv")
    shutil.copy(os.path.join(out, "table1.md"), results / f"{args.name}.md")
    aggregates = sweep_report.aggregate_records(records)
    plot(aggregates, spec, results / f"{args.name}.png")
    keep = ("cell_id", "column", "steps", "nfe", "snr", "label_map", "metrics", "wall_s")
    summary = {
        "args": vars(args),
        "training": {
            label: {"config": path, "n_iters_config": cfg.get_config().training.n_iters}
            for label, path, cfg in (
                ("VE", VE_CONFIG, fashion_mnist_smld_table1),
                ("VP", "configs/demo/fashion_mnist_ddpm_table1.py", fashion_mnist_ddpm_table1),
            )
        },
        "flow_check": checks,
        "sweep_wall_s": time.time() - start,
        "environment": _common.environment(),
        "cells": [{k: r.get(k) for k in keep} for r in records],
    }
    with open(results / f"{args.name}.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    with open(os.path.join(out, "table1.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
