"""The sweep's grid: the runs and the cells of a `SweepSpec` (experiments/sweep_spec.py).

A cell is (run, sampler, steps, repeat): a trained checkpoint (run) sampled with one sampler
setting and one seed. The grid comes from `config.sweep` (by default Table 1 of Song et al.
2021 for the config's SDE). `experiments/sweep.py` evaluates the cells,
`experiments/sweep_report.py` writes the tables.

Table 1 cells follow the paper's procedure (App. G; the wording quoted is that of
`shared/reference/score_sde_facts.md`, section 8, which transcribes the paper):
* P<N>: predictor only, N noise levels. "P2000 uses linear interpolation of noise scales,
  s'(x,i) = s(x, i/2). VE keeps sigma_min and sigma_max. VP halves beta_min and beta_max
  before doubling N." A column whose N differs from a discrete-time model's training N queries
  it through `sweep.label_map` ('linear', or Table 4's 'round': "the rounding-interpolation
  P2000 (s(x, floor(i/2)))"). The sampling SDE keeps the config's sigma_min / sigma_max and
  beta_min / beta_max: `sde_lib`'s DDPM betas are linspace(beta_min / N, beta_max / N, N), so
  with 2N levels each per-step beta (DDPM's beta_1 = 1e-4 ... beta_N = 0.02) is halved, which
  is the paper's "halves beta_min and beta_max before doubling N" in DDPM's per-step terms.
* C<N>: "C2000 is corrector-only, shared across predictor rows"; "C2000 uses 2 corrector
  steps per level" and the model's 1000 noise levels, i.e. 2000 corrector evaluations. So C<N>
  runs N / 2 levels x 2 Langevin steps = N evaluations (C1000: 500 levels x 2).
* PC<N>: N levels, one predictor and one corrector step at each (2N evaluations).
* snr: "Table 5, the best snr: VE C2000 0.22, VE PC1000 (anc / RD / PF) 0.17 / 0.16 / 0.17,
  VP C2000 0.27, VP PC1000 0.01 / 0.01 / 0.04" (`sweep.snr='paper'`, by column kind, so C200
  and C1000 take the C2000 value and PC100 the PC1000 one).
* "FID, mean +- std over 5 runs": `sweep.repeats` independent seeds per cell.

References:
  Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
  (arXiv:2011.13456), Tables 1, 4 and 5 and App. G.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

import ml_collections
from absl import logging

import fileio
import sampling
from experiments.sweep_spec import (
    C_STEPS_EACH,
    INT_LABEL_MODELS,
    PAPER_SNR,
    SAMPLERS,
    SDE_LABELS,
    SweepSpec,
    get_sweep_spec,
    parse_column,
    parse_sampler,
    parse_snr,
    parse_snr_cell,
    split_budgets,
)

# --------------------------------------------------------------------------------------------
# Runs and cells.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A trained model to sweep: its label, config and workdir."""

    label: str
    config: Any
    workdir: str


def _load_config_file(path: str):
    if not (path.endswith(".py") and os.path.isfile(path)):
        raise FileNotFoundError(f"Run config file {path!r} does not exist (expected a .py file)")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()


def _run_config(path: str, main_config):
    """A run's own config; eval.* and the data location come from the main config, so that
    every run is scored against the same reference data and feature networks."""
    config = ml_collections.ConfigDict(_load_config_file(path).to_dict())
    config.eval = ml_collections.ConfigDict(main_config.eval.to_dict())
    for field in ("source", "path", "data_dir"):
        if field in main_config.data:
            config.data[field] = main_config.data[field]
    return config


def get_runs(config, workdir: str, spec: SweepSpec) -> dict[str, Run]:
    """The current config and workdir first, then `sweep.runs` ('LABEL=config.py:workdir')."""
    label = spec.label or SDE_LABELS.get(config.training.sde.lower(), config.training.sde)
    runs = {label: Run(label, config, fileio.absolute(workdir))}
    for text in spec.runs:
        label, sep, rest = text.partition("=")
        path, sep2, run_workdir = rest.partition(":")
        if not (sep and sep2 and label and path and run_workdir):
            raise ValueError(
                f"Bad config.sweep.runs entry {text!r}; the form is 'LABEL=config.py:workdir'"
            )
        if label in runs:
            raise ValueError(f"Duplicate run label {label!r} in config.sweep (labels: {[*runs]})")
        runs[label] = Run(label, _run_config(path, config), fileio.absolute(run_workdir))
    return runs


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (run, sampler, steps) point of the grid.

    Attributes:
      run: run label. group: 'table1' or 'nfe'.
      row: Table 1 row ('corrector' for the shared C columns) or the sampler string.
      column: 'P1000'-style Table 1 column, or 'nfe<B>' / 'adaptive'.
      method: `config.sampling.method`. options: `config.sampling` fields to set.
      num_scales: N of the sampling SDE for PC cells (None: the training N).
      nfe_budget: the NFE budget of an 'nfe' cell.
      repeat: index of the sampling run (seed `sweep.seed + repeat`).
      label_map: how a discrete-time model is queried when `num_scales` differs from its
        training N: 'linear', 'round' or 'native' (`sweep.label_map`); '' = not needed.
      snr_source: where the corrector's snr comes from: 'paper' (Table 5), 'config',
        'sweep' (`sweep.snr`), 'cell' (`sweep.snr_cells`); '' = no corrector.
    """

    run: str
    group: str
    row: str
    column: str
    method: str
    options: tuple[tuple[str, Any], ...]
    num_scales: int | None = None
    nfe_budget: int | None = None
    repeat: int = 0
    label_map: str = ""
    snr_source: str = ""

    @property
    def cell_id(self) -> str:
        """Stable file-name slug of (run, sampler, steps[, repeat]); repeat 0 has no suffix."""
        suffix = f"__r{self.repeat}" if self.repeat else ""
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{self.run}__{self.row}__{self.column}{suffix}")


def _ddpm_ok(config, options: dict, n: int) -> bool:
    """VP / sub-VP DDPM tables (used by these predictors / correctors) need beta_max / N < 1."""
    uses_tables = options.get("predictor") in ("reverse_diffusion", "ancestral_sampling") or (
        options.get("corrector") in ("langevin", "ald")
    )
    vp = config.training.sde.lower() in ("vpsde", "subvpsde")
    return not (vp and uses_tables and config.model.beta_max / n >= 1.0)


def _pc_options(config, predictor: str, corrector: str, n_steps: int, flow: bool) -> dict:
    return {
        "predictor": predictor,
        "corrector": corrector,
        "n_steps_each": n_steps,
        "probability_flow": flow,
        "snr": float(config.sampling.snr),
    }


def cell_snr(spec: SweepSpec, run: Run, kind: str, column: str, row: str) -> tuple[float, str]:
    """The corrector snr of a C / PC cell and its source ('paper', 'config', 'sweep', 'cell').

    'paper' is Table 5 by column kind, not by N: a scaled-down C200 takes C2000's snr and PC100
    takes PC1000's (the snr sets the Langevin step relative to the noise, whatever the N).
    """
    config, fixed = run.config, parse_snr(spec.snr)
    if fixed is None:
        sde = config.training.sde.lower()
        value = PAPER_SNR.get((sde, kind) if kind == "C" else (sde, kind, row))
        source = "paper"
        if value is None:  # sub-VP, Euler-Maruyama rows: Table 5 has no value
            logging.info("No Table 5 snr for %s %s %s: config.sampling.snr.", sde, column, row)
    else:
        value, source = (fixed, "sweep") if fixed > 0 else (None, "config")
    if value is None:
        value, source = float(config.sampling.snr), "config"
    for text in spec.snr_cells:
        run_label, target, cell_row, snr = parse_snr_cell(text)
        if run_label in (None, run.label) and target in (kind, column) and cell_row in (None, row):
            value, source = snr, "cell"
    return float(value), source


def cell_label_map(spec: SweepSpec, config, num_scales: int) -> str:
    """`Cell.label_map` of a cell sampled with `num_scales` levels ('' when not needed)."""
    if config.training.continuous or num_scales == config.model.num_scales:
        return ""
    if spec.label_map == "linear" and config.model.name in INT_LABEL_MODELS:
        logging.warning(
            "%s takes integer noise levels: label_map 'round' instead of 'linear'.",
            config.model.name,
        )
        return "round"
    return spec.label_map


def table1_cell(
    run: Run, row: str, column: str, spec: SweepSpec | None = None, repeat: int = 0
) -> Cell | None:
    """The Table 1 cell (row, column) of a run; None when the sampler does not apply.

    `spec` (default: `get_sweep_spec(run.config)`) gives the snr and the label map.
    """
    spec = get_sweep_spec(run.config) if spec is None else spec
    kind, n = parse_column(column)
    config = run.config
    # Corrector of the config; Langevin (the paper's) when the config samples without one.
    corrector = config.sampling.get("corrector", "none")
    corrector = "langevin" if corrector == "none" else corrector
    predictor = "reverse_diffusion" if row == "probability_flow" else row
    flow = row == "probability_flow"
    levels, snr_source = n, ""
    if kind == "C":  # Shared by every row, as in the paper's table; N / 2 levels x 2 steps.
        row, levels = "corrector", n // C_STEPS_EACH
        options = _pc_options(config, "none", corrector, C_STEPS_EACH, False)
    elif kind == "P":
        options = _pc_options(config, predictor, "none", 1, flow)
    else:
        options = _pc_options(config, predictor, corrector, 1, flow)
    if kind != "P":
        options["snr"], snr_source = cell_snr(spec, run, kind, column, row)
    sde = config.training.sde.lower()
    if predictor == "ancestral_sampling" and kind != "C" and sde == "subvpsde":
        logging.info(
            "Skipping %s %s %s: ancestral sampling has no sub-VP form.", run.label, row, column
        )
        return None
    if not _ddpm_ok(config, options, levels):
        logging.warning("Skipping %s %s %s: needs beta_max / N < 1.", run.label, row, column)
        return None
    label_map = cell_label_map(spec, config, levels)
    items = tuple(sorted(options.items()))
    return Cell(run.label, "table1", row, column, "pc", items, levels, None, repeat, label_map,
                snr_source)  # fmt: skip


def _pc_budget_options(run: Run, text: str, options: dict) -> tuple[dict, int]:
    """A 'pc' sampler's options (defaults: the config's sampler) and its NFE per step."""
    config = run.config
    flow = bool(options.get("probability_flow", False))
    defaults = _pc_options(config, config.sampling.predictor, config.sampling.corrector, 1, flow)
    options = defaults | options
    if options["predictor"] == "ancestral_sampling" and config.training.sde.lower() == "subvpsde":
        raise ValueError(f"Sampler {text!r}: ancestral sampling has no sub-VP form")
    corrector_evals = (options["corrector"] != "none") * int(options["n_steps_each"])
    # Two-stage predictors (sra1, stochastic_heun) evaluate the score twice per step.
    evals = sampling.PREDICTOR_NFE.get(options["predictor"], 1) + corrector_evals
    if evals == 0:
        raise ValueError(f"Sampler {text!r} has neither a predictor nor a corrector")
    return options, evals


def nfe_cell(run: Run, text: str, budget: int | None, repeat: int = 0) -> Cell | None:
    """The cell of extra sampler `text` at NFE `budget` (None for adaptive solvers).

    Samplers keep the original's labels (`label_map` 'native') and the config's snr.
    """
    name, parsed = parse_sampler(text)
    kind = SAMPLERS[name]
    options = {kind.options[k]: v for k, v in parsed.items()}
    if kind.evals_per_step is None:
        items = tuple(sorted(options.items()))
        return Cell(run.label, "nfe", text, "adaptive", name, items, repeat=repeat)
    if name == "pc":
        options, evals = _pc_budget_options(run, text, options)
    else:
        evals = kind.evals_per_step
    n = (budget - kind.extra_evals) // evals
    if n < 1 or (name == "pc" and not _ddpm_ok(run.config, options, n)):
        logging.warning(
            "Skipping %s %s at NFE %d: %d steps are too few.", run.label, text, budget, n
        )
        return None
    # PC samplers take N from the sampling SDE (model.num_scales); the others from `steps`.
    num_scales = n if name == "pc" else None
    if name != "pc":
        options["steps"] = n
    items = tuple(sorted(options.items()))
    return Cell(run.label, "nfe", text, f"nfe{budget}", name, items, num_scales, budget, repeat)


def enumerate_cells(spec: SweepSpec, runs: dict[str, Run]) -> list[Cell]:
    """Every cell, in a stable order: per repeat, per run, Table 1 (column-major), then extra
    samplers. Repeat-major, so a partial sweep has whole tables of the first repeats."""
    cells = []
    for repeat in range(spec.repeats):
        for run in runs.values():
            for column in spec.columns:
                kind, _ = parse_column(column)
                for row in spec.rows[:1] if kind == "C" else spec.rows:
                    cells.append(table1_cell(run, row, column, spec, repeat))
            for text in spec.samplers:
                text, budgets = split_budgets(text)
                adaptive = SAMPLERS[parse_sampler(text)[0]].evals_per_step is None
                for budget in (None,) if adaptive else budgets or spec.nfe:
                    cells.append(nfe_cell(run, text, budget, repeat))
    return [c for c in cells if c is not None]


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Cells with position % count == index."""
    return [c for k, c in enumerate(cells) if k % count == index]
