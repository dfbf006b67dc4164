"""Collect run folders into tables and plots: methods x Recall@K, mean and spread over seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .runio import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, read_json, read_jsonl

__all__ = ["RunRecord", "collect_runs", "summarise", "markdown_table", "per_epoch_table",
           "plot_recall_bars", "run_label"]


@dataclass
class RunRecord:
    """One finished run: its folder, config, final results and per-epoch metrics."""

    folder: Path
    config: dict[str, Any]
    results: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return run_label(self.config)


def run_label(config: dict[str, Any]) -> str:
    """Return the row name of a run: the method, with its weight and T where they matter."""
    method = config.get("method", "?")
    if config.get("train_labels") == "fine":
        return f"{method} (fine-label oracle)"
    if config.get("untrained"):
        return "untrained (floor)"
    if method == "maskcon":
        return f"maskcon (w={config['weight']:g}, T={config['target_temperature']:g})"
    if method in ("grafit", "coins"):
        return f"{method} (w={config['weight']:g})"
    return method


def collect_runs(folders: Iterable[str | Path] | str | Path) -> list[RunRecord]:
    """Find every finished run (a folder with ``results.json``) below the given folders.

    Unfinished runs (no ``results.json``) are skipped.
    """
    if isinstance(folders, (str, Path)):
        folders = [folders]
    runs = []
    for top in folders:
        for results_path in sorted(Path(top).rglob(RESULTS_FILE)):
            folder = results_path.parent
            config_path = folder / CONFIG_FILE
            config = read_json(config_path) if config_path.exists() else {}
            runs.append(RunRecord(folder, config, read_json(results_path),
                                  read_jsonl(folder / METRICS_FILE)))
    return runs


# Colour of each method in every results figure, matched by the start of the run label. The
# oracle entry comes before "supcon" so that it matches first.
METHOD_COLORS = (("untrained", "C7"), ("selfcon", "C0"), ("supcon (fine", "C2"), ("supcon", "C1"),
                 ("grafit", "C4"), ("coins", "C5"), ("maskcon", "C3"))


def method_colors(labels: Iterable[str]) -> dict[str, str]:
    """Return a matplotlib colour for each run label, the same one in every results figure.

    A method keeps its colour from ``METHOD_COLORS`` across the bar, curve and fine-mass
    plots. A second label of the same method (another MaskCon setting, say) and unknown
    labels get the unused tab10 colours in turn.

    Example:
        >>> method_colors(["maskcon (w=0.5, T=0.1)", "supcon", "maskcon (w=1, T=0.1)"])
        {'maskcon (w=0.5, T=0.1)': 'C3', 'supcon': 'C1', 'maskcon (w=1, T=0.1)': 'C6'}
    """
    labels = list(dict.fromkeys(labels))
    colors: dict[str, str] = {}
    for label in labels:
        preferred = next((color for prefix, color in METHOD_COLORS if label.startswith(prefix)), None)
        if preferred is not None and preferred not in colors.values():
            colors[label] = preferred
    reserved = {color for _, color in METHOD_COLORS}
    spare = [f"C{i}" for i in range(10) if f"C{i}" not in reserved]
    spare += [f"C{i}" for i in range(10) if f"C{i}" in reserved]
    for label in labels:
        if label not in colors:
            unused = [color for color in spare if color not in colors.values()]
            colors[label] = unused[0] if unused else spare[len(colors) % len(spare)]
    return colors


def _row_order(label: str) -> tuple[int, str]:
    """Sort rows as floor, baselines, MaskCon, oracle."""
    for rank, prefix in enumerate(("untrained", "selfcon", "supcon (fine", "supcon", "grafit",
                                   "coins", "maskcon")):
        if label.startswith(prefix):
            return (rank if prefix != "supcon (fine" else 99), label
    return 50, label


def _mean_and_spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def summarise(runs: list[RunRecord], ks: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Group runs by label and return one row per group with mean and sample std over seeds.

    Each row has ``label``, ``runs``, ``seeds``, ``recall`` (K -> (mean, std)), ``map_at_r``,
    ``knn_accuracy``, ``coarse_recall_at_1``, ``fine_mass``, ``supcon_fine_mass`` and
    ``train_seconds`` (each a ``(mean, std)`` pair). Rows are ordered floor, baselines,
    MaskCon, then the fine-label oracle.
    """
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    if ks is None:
        ks = sorted({int(k) for run in runs for k in run.results.get("recall", {})})
    rows = []
    for label, members in sorted(groups.items(), key=lambda item: _row_order(item[0])):
        results = [m.results for m in members]
        row = {
            "label": label,
            "runs": len(members),
            "seeds": [r.get("seed") for r in results],
            "recall": {k: _mean_and_spread([r["recall"].get(str(k)) for r in results])
                       for k in ks},
        }
        for name in ("map_at_r", "knn_accuracy", "coarse_recall_at_1", "fine_mass",
                     "supcon_fine_mass", "train_seconds"):
            row[name] = _mean_and_spread([r.get(name) for r in results])
        rows.append(row)
    return rows


def _cell(pair: tuple[float, float], scale: float = 100.0, digits: int = 1,
          runs: int = 2) -> str:
    """Format mean ± std; a single run has no sample std, so only its value is shown."""
    mean, spread = pair
    if math.isnan(mean):
        return "-"
    if runs < 2:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {spread * scale:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Return a markdown table of the summary rows (percentages, mean ± std over seeds)."""
    ks = list(rows[0]["recall"]) if rows else []
    header = (["method", "runs"] + [f"R@{k}" for k in ks]
              + ["MAP@R", "kNN acc", "coarse R@1", "fine mass", "train s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], str(row["runs"])]
        runs = row["runs"]
        cells += [_cell(row["recall"][k], runs=runs) for k in ks]
        cells += [_cell(row["map_at_r"], runs=runs), _cell(row["knn_accuracy"], runs=runs),
                  _cell(row["coarse_recall_at_1"], runs=runs),
                  _cell(row["fine_mass"], 1.0, 3, runs=runs),
                  _cell(row["train_seconds"], 1.0, 0, runs=runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_recall_bars(rows: list[dict[str, Any]], path: str | Path | None = None,
                     ks: Iterable[int] = (1, 2, 5, 10), title: str | None = None):
    """Draw grouped bars of fine Recall@K per method with std error bars; save a PNG if asked.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: if ``rows`` is empty or a K is missing from the rows.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no runs to plot; pass the rows from summarise() of at least one run.")
    ks = [k for k in ks]
    missing = [k for k in ks if k not in rows[0]["recall"]]
    if missing:
        raise ValueError(f"Recall@K for K={missing} is not in the runs; available: "
                         f"{list(rows[0]['recall'])}.")

    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(ks), 3.6 + 0.25 * len(rows)), dpi=110)
    width = 0.8 / len(rows)
    colors = method_colors(row["label"] for row in rows)
    for i, row in enumerate(rows):
        means = [row["recall"][k][0] * 100 for k in ks]
        spreads = [row["recall"][k][1] * 100 for k in ks]
        positions = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(ks))]
        axes.bar(positions, means, width, yerr=spreads, capsize=2, color=colors[row["label"]],
                 label=f"{row['label']} (n={row['runs']})")
    axes.set_xticks(range(len(ks)), [f"R@{k}" for k in ks])
    axes.set_ylabel("fine Recall@K (%)")
    several_seeds = any(row["runs"] > 1 for row in rows)
    axes.set_title(title or ("Fine-label Recall@K on the test set"
                             + (" (mean ± std over seeds)" if several_seeds else "")))
    # Below the axes, so that the legend never hides the tops of the bars.
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    return figure


def per_epoch_table(runs: list[RunRecord], columns: Iterable[str] = (
        "loss", "recall_at_1", "fine_mass", "supcon_fine_mass")) -> str:
    """Return a compact markdown table: one row per method and epoch, means over seeds.

    ``recall_at_1`` is read from each epoch's ``recall`` entry; epochs that were not scored
    show "-". ``fine_mass`` is the share of the target's queue mass on the sample's own fine
    class, and ``supcon_fine_mass`` the same share for SupCon's targets on the same queue.
    """
    columns = list(columns)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.metrics:
            groups.setdefault(run.label, []).append(run)

    lines = ["| method | epoch | " + " | ".join(columns) + " |",
             "|" + "---|" * (2 + len(columns))]
    for label, members in sorted(groups.items(), key=lambda item: _row_order(item[0])):
        epochs = max(len(member.metrics) for member in members)
        for epoch in range(epochs):
            records = [m.metrics[epoch] for m in members if epoch < len(m.metrics)]
            cells = [label, str(epoch + 1)]
            for column in columns:
                values = [_epoch_value(record, column) for record in records]
                mean, _ = _mean_and_spread([v for v in values if v is not None])
                cells.append("-" if math.isnan(mean) else f"{mean:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _epoch_value(record: dict[str, Any], column: str) -> float | None:
    if column == "recall_at_1":
        return record.get("recall", {}).get("1")
    return record.get(column)
