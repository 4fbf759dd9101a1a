"""Sampler sweeps: the paper's Table 1 and quality-vs-NFE studies, one finished cell at a time.

    python sweep.py --config configs/vp/ddpm/cifar10.py --workdir W [--shard i/n] \
        [--sweep.samplers="('ode', 'ddim')" --sweep.num_samples=10000 ...]
    python main.py --config CFG --workdir W --mode sweep [--shard i/n]

The grid is `experiments/sweep_spec.py` (`config.sweep`) and `sweep_grid.py` (cells); each
cell is sampled in resumable rounds and scored with the project's metrics (`training.sample_eval`); the outputs
are written by `experiments/sweep_report.py`. `--shard i/n` runs the cells with index % n == i.

Workdir layout (W is the workdir of the current config):
  W/sweep/cells/<cell_id>.json      one finished cell (written atomically; a rerun skips it)
  W/sweep/grids/<cell_id>.png       its sample grid
  W/sweep/work/<cell_id>/           sample rounds of an unfinished cell (resumed, then removed)
  W/sweep/results.csv               one row per finished cell (any shard)
  W/sweep/table1.md                 Table 1 layout: samplers x (P/C/PC columns per run)
  W/sweep/nfe_table.md              extra samplers x NFE budgets
  W/sweep/quality_vs_nfe.png        primary metric vs real NFE (log x)

W may be local or gs:// (files through `fileio`). Multi-host: process 0 writes every file and
decides which cells are finished (`devices.main_value`); every process samples each cell.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

import datasets
import fileio
import sampling
import utils
from experiments import sweep_report
from experiments.sweep_grid import Cell, Run, enumerate_cells, get_runs, shard_cells
from experiments.sweep_spec import (
    METRICS,
    SweepSpec,
    get_sweep_spec,
    parse_shard,
)
from models import utils as mutils
from training import devices, sample_eval, score_model


def cell_config(config, cell: Cell) -> ml_collections.ConfigDict:
    """An unlocked copy of `config` with the cell's `config.sampling` fields (and N) set."""
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.sampling.method = cell.method
    for key, value in cell.options:
        cfg.sampling[key] = value
    if cell.num_scales is not None:
        cfg.model.num_scales = cell.num_scales
    return cfg


def build_sampling_fn(config, cell: Cell, model, shape, sharding=None):
    """`sampling_fn(key, params) -> (x, nfe)` of a cell.

    The sampling SDE has the cell's N (and the config's sigma_min / sigma_max, beta_min /
    beta_max); the score function keeps the training SDE (`score_sde`), so a discrete-time
    model is queried between its training levels through the cell's label map: P2000 on a
    N = 1000 model evaluates `s(x, i / 2)` ('linear', Table 1) or `s(x, floor(i / 2))`
    ('round', Table 4); 'native' or '' keeps the original code's labels.
    """
    cfg = cell_config(config, cell)
    train_sde, _ = score_model.sde_from_config(config)
    sampling_sde, eps = score_model.sde_from_config(cfg)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    label_map = cell.label_map if cell.label_map in ("linear", "round") else None
    return sampling.get_sampling_fn(
        cfg, sampling_sde, model, shape, inverse_scaler, eps, sharding=sharding,
        score_sde=train_sde, label_map=label_map,
    )  # fmt: skip


@dataclasses.dataclass
class RunContext:
    """A run with its model and restored EMA params."""

    run: Run
    model: Any
    params: Any
    step: int
    mesh: Any


def restore_ema_params(config, workdir: str, model, ckpt: int = -1):
    """EMA params of checkpoint index `ckpt` (step ckpt * snapshot_freq; -1 = latest good)."""
    ckpt_dir = fileio.join(fileio.absolute(workdir), "checkpoints")
    how = f"train first: python main.py --config <config> --workdir {workdir} --mode train"
    if not devices.main_value(lambda: fileio.isdir(ckpt_dir)):
        raise FileNotFoundError(f"No checkpoint directory {ckpt_dir}; {how}")
    max_step = None if ckpt < 0 else ckpt * config.training.snapshot_freq
    return score_model.restore_score_params(config, workdir, model, max_step=max_step)


def load_run(run: Run, spec: SweepSpec) -> RunContext:
    """Builds the run's model and restores its EMA params."""
    devices.check_batch_size(spec.batch_size, "sweep.batch_size")
    model = mutils.get_model(run.config)
    params, step = restore_ema_params(run.config, run.workdir, model, spec.ckpt)
    logging.info("Run %s: checkpoint step %d of %s", run.label, step, run.workdir)
    return RunContext(run, model, params, step, devices.make_mesh())


def _keep_metric(key: str, wanted: tuple[str, ...]) -> bool:
    if not wanted:
        return True
    if any(key in METRICS[m] for m in wanted):
        return True
    return ("fd" in wanted and key.startswith("fd_")) or (
        "kid" in wanted and key.startswith("kid_")
    )


def cell_metrics(ctx: RunContext, spec: SweepSpec, cell: Cell, samples, folder: str) -> dict:
    """Sample metrics of `sample_eval.sample_metrics`, restricted to `spec.metrics`; bpd on
    'ode' cells when asked (the probability-flow likelihood of the test data)."""
    wanted = spec.metrics
    config = ml_collections.ConfigDict(ctx.run.config.to_dict())
    if wanted and not set(wanted) & {"fid", "kid", "is"}:
        config.eval.inception_path = "none"
    if wanted and not set(wanted) & {"fd", "kid"}:
        config.eval.feature_extractor_path = ""
    results = {}
    if not wanted or set(wanted) - {"bpd"}:
        results = sample_eval.sample_metrics(config, samples)
    results = {k: float(v) for k, v in results.items() if _keep_metric(k, wanted)}
    if "bpd" in wanted and cell.method == "ode":
        train_sde, _ = score_model.sde_from_config(config)
        bpd_key = jax.random.fold_in(jax.random.key(config.seed + 1), ctx.step)
        results["bpd"] = sample_eval.bpd_rounds(
            config, ctx.params, train_sde, ctx.model, folder, bpd_key, ctx.mesh, f"ckpt_{ctx.step}"
        )
    return results


def evaluate_cell(ctx: RunContext, cell: Cell, spec: SweepSpec, out_dir: str) -> dict:
    """Samples and scores one cell; returns its record (what `cells/<cell_id>.json` holds)."""
    config = ctx.run.config
    shape = (spec.batch_size, *datasets.image_shape(config))
    fn = build_sampling_fn(config, cell, ctx.model, shape, devices.batch_sharding(ctx.mesh))
    work_dir = fileio.makedirs(fileio.join(out_dir, "work", cell.cell_id))
    # Repeat r: seed + r (repeat 0 is the seed of a single-run sweep). Every cell of a repeat
    # starts from the same prior noise, so the columns of one repeat are paired.
    seed = spec.seed + cell.repeat
    draws = sample_eval.sample_rounds(
        fn, ctx.params, jax.random.key(seed), spec.num_samples, spec.batch_size, work_dir,
        prefix="round_", desc=cell.cell_id,
    )  # fmt: skip
    samples = draws.pop("samples")
    metrics = cell_metrics(ctx, spec, cell, samples, work_dir)
    if utils.is_main_process():
        save_grid(samples[:64], fileio.join(out_dir, "grids", f"{cell.cell_id}.png"))
    options = dict(cell.options)
    return {
        "cell_id": cell.cell_id,
        **{k: v for k, v in dataclasses.asdict(cell).items() if k != "options"},
        "sampler": cell.row,
        "sde": config.training.sde,
        "predictor": options.get("predictor", ""),
        "corrector": options.get("corrector", ""),
        "options": options,
        "snr": options["snr"] if options.get("corrector", "none") != "none" else None,
        "seed": seed,
        "training_scales": int(config.model.num_scales),
        "steps": cell.num_scales or options.get("steps"),
        "nfe": float(np.mean(draws["nfe_rounds"])),
        "metrics": metrics,
        "num_samples": int(len(samples)),
        "ckpt_step": int(ctx.step),
        "workdir": ctx.run.workdir,
        **draws,
    }


def save_grid(samples_uint8: np.ndarray, path: str) -> None:
    utils.save_png(utils.image_grid(samples_uint8), path)


# --------------------------------------------------------------------------------------------
# The sweep loop.
# --------------------------------------------------------------------------------------------


def run_sweep(config, workdir: str, shard: str = "0/1") -> list[dict]:
    """Evaluates this shard's unfinished cells, one JSON file each, rebuilding the outputs.

    Args:
      config: the current run's config, optionally with a `sweep` ConfigDict.
      workdir: the current run's workdir; results go to `workdir/sweep/`.
      shard: 'i/n': evaluate cells whose enumeration index % n == i.

    Returns:
      The records of every finished cell in `workdir/sweep/cells` (all shards).
    """
    index, count = parse_shard(shard)
    spec = get_sweep_spec(config)
    runs = get_runs(config, workdir, spec)
    cells = enumerate_cells(spec, runs)
    if not cells:
        raise ValueError(
            "Every cell of the sweep was skipped, so it has no cells (the warnings above say "
            "why; VP and sub-VP PC steps need N > model.beta_max): config.sweep columns "
            f"{list(spec.columns)}, samplers {list(spec.samplers)}, nfe {list(spec.nfe)}. Set "
            "config.sweep.columns / samplers, or give more steps."
        )
    out_dir = fileio.join(fileio.absolute(workdir), "sweep")
    mine = shard_cells(cells, index, count)
    logging.info(
        "Sweep: %d cells, %d in shard %s, results in %s", len(cells), len(mine), shard, out_dir
    )
    contexts: dict[str, RunContext] = {}
    bar = utils.progress_bar(len(mine), desc=f"sweep {shard}")
    for cell in mine:
        path = fileio.join(out_dir, "cells", f"{cell.cell_id}.json")
        if devices.main_value(lambda p=path: fileio.exists(p)):
            if utils.is_main_process():
                _log_finished(path, cell)
        else:
            logging.info("Cell %s ...", cell.cell_id)
            if cell.run not in contexts:
                contexts[cell.run] = load_run(runs[cell.run], spec)
            record = evaluate_cell(contexts[cell.run], cell, spec, out_dir)
            if utils.is_main_process():
                fileio.write_text_atomic(path, json.dumps(record, indent=2, default=float) + "\n")
                fileio.rmtree(fileio.join(out_dir, "work", cell.cell_id))
                sweep_report.write_outputs(out_dir, spec, cells)
        bar.update()
    bar.close()
    if utils.is_main_process():
        sweep_report.write_outputs(out_dir, spec, cells)
    return devices.main_value(lambda: sweep_report.load_records(out_dir))


def _log_finished(path: str, cell: Cell) -> None:
    """Logs a skipped cell; warns when its file was made with other sampler settings."""
    record = json.loads(fileio.read_text(path))
    if record.get("options", dict(cell.options)) != dict(cell.options):
        logging.warning(
            "Cell %s was computed with %s, not %s; delete %s to recompute it.",
            cell.cell_id, record["options"], dict(cell.options), path,
        )  # fmt: skip
    else:
        logging.info("Cell %s is finished; skipping it.", cell.cell_id)
