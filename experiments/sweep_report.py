"""Sweep outputs: results.csv, table1.md, nfe_table.md and quality_vs_nfe.png.

Rebuilt by `sweep.run_sweep` after every finished cell from all cell files present in
`W/sweep/cells/` (any shard), so partial sweeps show partial tables. With `sweep.repeats` > 1
the tables show `mean ± std` over the finished repeats in the paper's style (`3.21 ± .02`,
the sample standard deviation), and results.csv holds a row per repeat plus a 'mean' row per
cell with `<metric>_std` and `n_repeats`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np

import fileio
import utils
from experiments.sweep_grid import Cell
from experiments.sweep_spec import ROW_TITLES, SweepSpec, parse_column

CSV_FIELDS = (
    "cell_id", "run", "sde", "group", "sampler", "method", "predictor", "corrector", "column",
    "steps", "training_scales", "label_map", "snr", "snr_source", "nfe_budget", "nfe", "repeat",
    "seed",
)  # fmt: skip
CSV_TAIL = ("n_repeats", "wall_s", "compile_s", "images_per_s", "num_samples", "ckpt_step")
REPEAT_SUFFIX = re.compile(r"__r\d+$")


def load_records(out_dir: str) -> list[dict]:
    """Every finished cell record in `out_dir/cells`, sorted by cell id."""
    folder = fileio.join(out_dir, "cells")
    names = [n for n in fileio.listdir(folder) if n.endswith(".json")]
    return [json.loads(fileio.read_text(fileio.join(folder, name))) for name in names]


def primary_metric(records: list[dict]) -> str | None:
    """'fid' when any cell has it, else the first 'fd_<name>', else None."""
    keys = sorted({k for r in records for k in r["metrics"]})
    if "fid" in keys:
        return "fid"
    return next((k for k in keys if k.startswith("fd")), None)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_mean_std(values) -> str:
    """One value as '%.4g'; several as the paper's 'mean ± std' ('3.21 ± .02', ddof 1)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return _fmt(values[0])
    std = f"{np.std(values, ddof=1):.2f}"
    return f"{np.mean(values):.2f} ± {std[1:] if std.startswith('0.') else std}"


def aggregate_records(records: list[dict]) -> dict[str, dict]:
    """Records of the repeats of each cell, keyed by the cell id of repeat 0 (the base id).

    Each value is the repeat-0-like record with `cell_id` = base id, `repeat` = 'mean',
    `metrics` = means, `metrics_std`, `values` (metric -> per-repeat list), `nfe` = mean NFE
    and `n_repeats`.
    """
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(REPEAT_SUFFIX.sub("", r["cell_id"]), []).append(r)
    out = {}
    for base, group in groups.items():
        group = sorted(group, key=lambda r: r.get("repeat", 0))
        keys = sorted({k for r in group for k in r["metrics"]})
        values = {k: [r["metrics"][k] for r in group if k in r["metrics"]] for k in keys}
        out[base] = group[0] | {
            "cell_id": base,
            "repeat": "mean",
            "seed": "",
            "metrics": {k: float(np.mean(v)) for k, v in values.items()},
            "metrics_std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                            for k, v in values.items()},
            "values": values,
            "nfe": float(np.mean([r["nfe"] for r in group])),
            "n_repeats": len(group),
        }  # fmt: skip
    return out


def write_outputs(out_dir: str, spec: SweepSpec, cells: list[Cell]) -> None:
    """Rebuilds every summary file from the cell files present (any shard)."""
    records = load_records(out_dir)
    metric = primary_metric(records)
    aggregates = aggregate_records(records)
    write_csv(records, fileio.join(out_dir, "results.csv"), aggregates)
    by_cell = aggregates
    runs = list(dict.fromkeys(c.run for c in cells))
    fileio.write_text_atomic(
        fileio.join(out_dir, "table1.md"), table1_markdown(spec, runs, by_cell, metric, cells)
    )
    fileio.write_text_atomic(
        fileio.join(out_dir, "nfe_table.md"), nfe_markdown(spec, cells, by_cell, metric)
    )
    plot_quality_vs_nfe(
        list(aggregates.values()), metric, fileio.join(out_dir, "quality_vs_nfe.png")
    )


def write_csv(records: list[dict], path: str, aggregates: dict[str, dict] | None = None) -> None:
    """One row per record (repeat); then a 'mean' row per cell with two or more repeats."""
    metric_keys = sorted({k for r in records for k in r["metrics"]})
    several = [a for a in (aggregates or {}).values() if a["n_repeats"] > 1]
    std_keys = [f"{k}_std" for k in metric_keys] if several else []
    rows = [[r.get(k, "") for k in CSV_FIELDS] + [r["metrics"].get(k, "") for k in metric_keys]
            + [""] * len(std_keys) + [r.get(k, "") for k in CSV_TAIL] for r in records]  # fmt: skip
    rows += [[a.get(k, "") for k in CSV_FIELDS] + [a["metrics"].get(k, "") for k in metric_keys]
             + [a["metrics_std"].get(k, "") for k in metric_keys]
             + [a.get(k, "") for k in CSV_TAIL] for a in several]  # fmt: skip
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([*CSV_FIELDS, *metric_keys, *std_keys, *CSV_TAIL])
    writer.writerows(rows)
    fileio.write_text_atomic(path, text.getvalue())


def _value(record: dict | None, metric: str | None):
    return None if record is None or metric is None else record["metrics"].get(metric)


def _cell_text(record: dict | None, metric: str | None, repeats: int) -> str:
    """A cell's metric: the value, or 'mean ± std' of its repeats ('(n=k)' while partial)."""
    values = None if record is None or metric is None else record.get("values", {}).get(metric)
    if not values:
        return _fmt(_value(record, metric))
    text = format_mean_std(values)
    return text if len(values) >= repeats else f"{text} (n={len(values)})"


# Below the Table 1 layout: what its columns mean (the paper's wording, App. G / Table 1).
TABLE1_NOTES = (
    "P<N>: predictor only, N steps. C<N>: corrector only, N corrector evaluations = N/2 noise "
    "levels x 2 Langevin steps (the paper's C2000: 2 steps at each of the model's 1000 levels). "
    "PC<N>: N predictor + N corrector steps. C columns are shared by every row.",
    "[linear] / [round]: a discrete-time model trained with another N is queried as "
    "s'(x, i) = s(x, i N_train / N), interpolating the noise level (Table 1's P2000: "
    "s(x, i/2)), or at the rounded level (Table 4); [native]: the original code's labels.",
)


def _snr_notes(runs: list[str], spec: SweepSpec, cells: list[Cell]) -> list[str]:
    """'snr: VE C200 0.22 (paper); VE PC100 ancestral sampling 0.17 (paper), ...' lines."""
    lines = []
    for run in runs:
        parts = [
            f"{c.column}{'' if c.row == 'corrector' else ' ' + ROW_TITLES.get(c.row, c.row)} "
            f"{dict(c.options)['snr']:g} ({c.snr_source})"
            for c in cells
            if c.run == run and c.group == "table1" and c.snr_source and c.repeat == 0
        ]
        if parts:
            lines.append(f"snr of {run} (source: paper = Table 5, sweep.snr = '{spec.snr}'): "
                         + "; ".join(parts) + ".")  # fmt: skip
    return lines


def table1_markdown(
    spec: SweepSpec, runs: list[str], by_cell: dict, metric: str | None, cells=()
) -> str:
    """Rows = samplers, columns = `spec.columns` per run; C columns repeat in every row.

    `by_cell` maps base cell ids to records or aggregates (`aggregate_records`); `cells`
    (optional) adds the label maps to the column titles and the snr of every cell below.
    """
    label_maps = {(c.run, c.column): c.label_map for c in cells if c.group == "table1"}
    header = ["predictor"] + [
        f"{run} {col}" + (f" [{label_maps[run, col]}]" if label_maps.get((run, col)) else "")
        for run in runs
        for col in spec.columns
    ]
    over = f", mean ± std over {spec.repeats} sampling runs" if spec.repeats > 1 else ""
    lines = [f"Table 1 layout (Song et al. 2021); C<N> = N corrector evaluations (N/2 noise "
             f"levels x 2 Langevin steps). Metric: {metric or 'none yet'} (lower is better)"
             f"{over}; '-' = not evaluated.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]  # fmt: skip
    for row in spec.rows:
        texts = [ROW_TITLES.get(row, row)]
        for run in runs:
            for col in spec.columns:
                shared = parse_column(col)[0] == "C"
                cell_id = Cell(run, "table1", "corrector" if shared else row, col, "pc", ()).cell_id
                texts.append(_cell_text(by_cell.get(cell_id), metric, spec.repeats))
        lines.append("| " + " | ".join(texts) + " |")
    lines += ["", *TABLE1_NOTES, *_snr_notes(runs, spec, list(cells))]
    return "\n".join(lines) + "\n"


def nfe_markdown(spec: SweepSpec, cells: list[Cell], by_cell: dict, metric: str | None) -> str:
    """Rows = extra samplers (per run), columns = NFE budgets (+ adaptive solvers)."""
    nfe_cells = [c for c in cells if c.group == "nfe"]
    budgets = sorted({int(c.column[3:]) for c in nfe_cells if c.column.startswith("nfe")})
    columns = [f"nfe{b}" for b in budgets] + (
        ["adaptive"] if any(c.column == "adaptive" for c in nfe_cells) else []
    )
    header = ["run", "sampler"] + [c.removeprefix("nfe") for c in columns]
    lines = [f"Metric: {metric or 'none yet'} vs NFE budget; (nfe N) = the NFE really used when "
             "it differs; '-' = not evaluated.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]  # fmt: skip
    for run, sampler in dict.fromkeys((c.run, c.row) for c in nfe_cells):
        texts = [run, sampler]
        for column in columns:
            record = next(
                (by_cell.get(c.cell_id) for c in nfe_cells
                 if (c.run, c.row, c.column) == (run, sampler, column)), None,
            )  # fmt: skip
            text = _cell_text(record, metric, spec.repeats)
            if record is not None and record.get("nfe_budget") != record["nfe"]:
                text += f" (nfe {record['nfe']:.0f})"
            texts.append(text)
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def plot_quality_vs_nfe(records: list[dict], metric: str | None, path: str) -> None:
    """Primary metric vs real NFE: one line per (run, extra sampler), Table 1 cells as points
    (means with +- std bars for aggregates of several repeats)."""
    fig = utils.new_figure((7, 4.5))
    ax = fig.add_subplot()
    lines: dict[tuple[str, str], list] = {}
    for r in records:
        value = _value(r, metric)
        if value is None or not math.isfinite(value):
            continue
        std = r.get("metrics_std", {}).get(metric, 0.0)
        if r["group"] == "nfe":
            lines.setdefault((r["run"], r["row"]), []).append((r["nfe"], value))
        elif std:
            ax.errorbar([r["nfe"]], [value], yerr=[std], fmt="x", color="gray", capsize=2)
        else:
            ax.scatter([r["nfe"]], [value], marker="x", color="gray")
            ax.annotate(f"{r['run']} {r['row']} {r['column']}", (r["nfe"], value), fontsize=6)
    for (run, sampler), points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=f"{run} {sampler}")
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the point labels
    ax.set_title("Sample quality vs NFE (lower is better)", fontsize=9)
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(metric or "no metric yet")
    if lines:
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.96)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    fileio.write_bytes(path, png.getvalue())
