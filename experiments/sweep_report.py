"""Sweep outputs: results.csv, table1.md, nfe_table.md and quality_vs_nfe.png.

Rebuilt by `sweep.run_sweep` after every finished cell from all cell files present in
`W/sweep/cells/` (any shard), so partial sweeps show partial tables.
"""

from __future__ import annotations

import csv
import io
import json
import math

import fileio
import utils
from experiments.sweep_grid import ROW_TITLES, Cell, SweepSpec, parse_column

CSV_FIELDS = (
    "cell_id", "run", "sde", "group", "sampler", "method", "predictor", "corrector", "column",
    "steps", "nfe_budget", "nfe",
)  # fmt: skip
CSV_TAIL = ("wall_s", "compile_s", "images_per_s", "num_samples", "ckpt_step")


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


def write_outputs(out_dir: str, spec: SweepSpec, cells: list[Cell]) -> None:
    """Rebuilds every summary file from the cell files present (any shard)."""
    records = load_records(out_dir)
    metric = primary_metric(records)
    write_csv(records, fileio.join(out_dir, "results.csv"))
    by_cell = {r["cell_id"]: r for r in records}
    runs = list(dict.fromkeys(c.run for c in cells))
    utils.write_atomic(
        fileio.join(out_dir, "table1.md"), table1_markdown(spec, runs, by_cell, metric)
    )
    utils.write_atomic(
        fileio.join(out_dir, "nfe_table.md"), nfe_markdown(spec, cells, by_cell, metric)
    )
    plot_quality_vs_nfe(records, metric, fileio.join(out_dir, "quality_vs_nfe.png"))


def write_csv(records: list[dict], path: str) -> None:
    metric_keys = sorted({k for r in records for k in r["metrics"]})
    rows = [[r.get(k, "") for k in CSV_FIELDS] + [r["metrics"].get(k, "") for k in metric_keys]
            + [r.get(k, "") for k in CSV_TAIL] for r in records]  # fmt: skip
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([*CSV_FIELDS, *metric_keys, *CSV_TAIL])
    writer.writerows(rows)
    fileio.write_text_atomic(path, text.getvalue())


def _value(record: dict | None, metric: str | None):
    return None if record is None or metric is None else record["metrics"].get(metric)


def table1_markdown(spec: SweepSpec, runs: list[str], by_cell: dict, metric: str | None) -> str:
    """Rows = samplers, columns = `spec.columns` per run; C columns repeat in every row."""
    header = ["predictor"] + [f"{run} {col}" for run in runs for col in spec.columns]
    lines = [f"Table 1 layout (Song et al. 2021). Metric: {metric or 'none yet'} "
             f"(lower is better); '-' = not evaluated.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]  # fmt: skip
    for row in spec.rows:
        texts = [ROW_TITLES.get(row, row)]
        for run in runs:
            for col in spec.columns:
                shared = parse_column(col)[0] == "C"
                cell_id = Cell(run, "table1", "corrector" if shared else row, col, "pc", ()).cell_id
                texts.append(_fmt(_value(by_cell.get(cell_id), metric)))
        lines.append("| " + " | ".join(texts) + " |")
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
            text = _fmt(_value(record, metric))
            if record is not None and record.get("nfe_budget") != record["nfe"]:
                text += f" (nfe {record['nfe']:.0f})"
            texts.append(text)
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def plot_quality_vs_nfe(records: list[dict], metric: str | None, path: str) -> None:
    """Primary metric vs real NFE: one line per (run, extra sampler), Table 1 cells as points."""
    fig = utils.new_figure((7, 4.5))
    ax = fig.add_subplot()
    lines: dict[tuple[str, str], list] = {}
    for r in records:
        value = _value(r, metric)
        if value is None or not math.isfinite(value):
            continue
        if r["group"] == "nfe":
            lines.setdefault((r["run"], r["row"]), []).append((r["nfe"], value))
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
