"""Sample quality vs NFE of every sampler on the demo model, through the sweep tool.

Runs `experiments.sweep.run_sweep` on a trained demo workdir (`make demo`, Fashion-MNIST DDPM++ VP) with
two grids and copies the sweep's outputs to bench/results/:

  * `--grid nfe`: PC (Euler-Maruyama; reverse diffusion + Langevin), SRA1, DPM-Solver-2 (2M),
    DPM-Solver-3 (3S), DPM-Solver++ 2M (with and without dynamic thresholding), DDIM, EDM Heun
    at NFE budgets {10, 20, 50, 100, 1000} (the ODE solvers up to 100),
    plus Dopri5 and the adaptive SDE solver at their own NFE. Offline FD / KID (the demo's
    feature extractor) and images/s at batch 64. -> quality_vs_nfe.{csv,md,png,json}
  * `--grid table1`: the paper's Table 1 layout (rows: ancestral sampling, reverse diffusion,
    probability flow; columns P/C/PC) with the step counts scaled down for CPU (default
    P100, P200, C200, PC100). -> table1_demo.{csv,md,json}

    python bench/quality_vs_nfe.py --workdir runs/demo [--grid nfe|table1] [--num_samples 256]

Each cell is resumable (the sweep stores finished cells), so an interrupted run continues.
"""

import argparse
import json
import os
import shutil

import _common
from absl import logging

from configs.demo import fashion_mnist_ddpmpp
from experiments import sweep, sweep_spec

NFE_SAMPLERS = (
    # Probability-flow ODE solvers at a fixed NFE budget.
    "dpm_solver:order=2:method=multistep@10/20/50/100",
    "dpm_solver:order=3:method=singlestep@10/20/50/100",
    "dpm_solver:order=2:method=multistep:algorithm=dpmsolver++@10/20/50/100",
    "dpm_solver:order=2:method=multistep:algorithm=dpmsolver++:thresholding=true@10/20/50/100",
    "ddim@10/20/50/100",
    "heun@10/20/50/100",
    # Adaptive solvers (their own NFE).
    "ode",
    "adaptive",
    # SDE samplers; N = budget / score evaluations per step.
    "pc:predictor=euler_maruyama:corrector=none@10/20/50/100/1000",
    "pc:predictor=reverse_diffusion:corrector=langevin@50/100/1000",
    "pc:predictor=sra1:corrector=none@20/50/100/1000",
)


def demo_config(workdir: str, grid: str, num_samples: int, columns: tuple[str, ...]):
    """The demo config with the sweep grid, offline metrics and batch 64."""
    config = fashion_mnist_ddpmpp.get_config()
    with config.unlocked():
        config.sweep = sweep_spec.default_sweep_config()
    config.eval.feature_extractor_path = os.path.join(workdir, "extractor")
    config.eval.inception_path = "none"
    s = config.sweep
    s.num_samples, s.batch_size, s.metrics = num_samples, 64, ("fd", "kid")
    if grid == "nfe":
        s.rows, s.columns, s.samplers = (), (), NFE_SAMPLERS
        s.nfe = (10, 20, 50, 100, 1000)
    else:
        s.columns, s.samplers = columns, ()
    return config


def sweep_dir(workdir: str, grid: str) -> str:
    """A workdir per grid (sharing the checkpoints), so each grid's tables stand alone."""
    path = os.path.join(workdir, f"bench_{grid}")
    os.makedirs(path, exist_ok=True)
    link = os.path.join(path, "checkpoints")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints")), link)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--grid", choices=("nfe", "table1"), default="nfe")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--columns", default="P100,P200,C200,PC100")
    args = parser.parse_args()
    logging.set_verbosity(logging.INFO)
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        raise SystemExit(f"No checkpoints in {args.workdir}: run `make demo` first.")
    columns = tuple(args.columns.split(","))
    config = demo_config(args.workdir, args.grid, args.num_samples, columns)
    work = sweep_dir(args.workdir, args.grid)
    records = sweep.run_sweep(config, work)
    name = "quality_vs_nfe" if args.grid == "nfe" else "table1_demo"
    out = os.path.join(work, "sweep")
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(out, "results.csv"), _common.RESULTS / f"{name}.csv")
    table = "nfe_table.md" if args.grid == "nfe" else "table1.md"
    shutil.copy(os.path.join(out, table), _common.RESULTS / f"{name}.md")
    if args.grid == "nfe":
        shutil.copy(os.path.join(out, "quality_vs_nfe.png"), _common.RESULTS / f"{name}.png")
    keep = ("cell_id", "sampler", "column", "steps", "nfe", "metrics", "wall_s", "images_per_s")
    summary = {
        "workdir": args.workdir,
        "num_samples": args.num_samples,
        "batch_size": 64,
        "environment": _common.environment(),
        "cells": [{k: r.get(k) for k in keep} for r in records],
    }
    with open(_common.RESULTS / f"{name}.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    with open(os.path.join(out, table)) as f:
        print(f.read())


if __name__ == "__main__":
    main()
