"""Figures for the teaching notebooks: heatmaps of target rows, a (T, w) grid and sample relations.

A target row has ``1 + K`` columns: column 0 is the sample's positive key and columns ``1..K``
are the queue entries (see ``maskcon_mini.targets``). Each ``plot_*`` function checks its input,
draws a new Figure through pyplot (so Jupyter's inline backend shows it at the end of the cell)
and returns it. ``save_figure`` writes a Figure as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .report import method_colors

__all__ = [
    "format_temperature",
    "plot_sample_relations",
    "plot_target_panels",
    "plot_target_rows",
    "plot_temperature_weight_grid",
    "save_figure",
]

# Colours of the positive key and of the coarse groups (the first colours of matplotlib's tab10).
POSITIVE_COLOR = "#d62728"
GROUP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
OTHER_COLOR = "#bbbbbb"
HEATMAP_CMAP = "Blues"
# Cells get their value written into them only up to this many cells per panel.
MAX_ANNOTATED_CELLS = 600


def format_temperature(temperature: float) -> str:
    """Return a short label for a temperature: ``"inf"`` for math.inf, else ``"%g"``."""
    return "inf" if math.isinf(temperature) else f"{temperature:g}"


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``figure`` to ``path`` as PNG, creating the parent folder when it is missing.

    Args:
        figure: the matplotlib Figure to write.
        path: the file name; it must end in ``.png``.
        dpi: resolution in dots per inch.

    Returns:
        The path that was written.

    Raises:
        ValueError: if ``figure`` is not a Figure, the suffix is not ``.png`` or dpi < 1.
    """
    if not isinstance(figure, Figure):
        raise ValueError(f"figure must be a matplotlib Figure, got {type(figure).__name__}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are saved as PNG only, so the path must end in .png, got {path}.")
    if int(dpi) < 1:
        raise ValueError(f"dpi must be >= 1, got {dpi}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=int(dpi), format="png", bbox_inches="tight")
    return path


# Input checks.


def _as_array(values, name: str, ndim: int) -> np.ndarray:
    """Convert a tensor or array-like to a float64 NumPy array with ``ndim`` dimensions."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {error}") from error
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}.")
    return array


def _check_target_values(array: np.ndarray, name: str) -> None:
    if array.shape[-1] < 2:
        raise ValueError(
            f"{name} must have at least 2 columns (the positive key and one queue entry), "
            f"got shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf, but target weights must be finite.")
    if np.any(array < 0):
        raise ValueError(f"{name} contains negative values (minimum {array.min():g}), but "
                         f"target weights must be non-negative.")


def _check_length(values, expected: int, name: str, what: str) -> list:
    values = list(values)
    if len(values) != expected:
        raise ValueError(f"{name} must have one entry per {what} ({expected}), got {len(values)}.")
    return values


def _group_color(group: int | None) -> str:
    if group is None or int(group) < 0:
        return OTHER_COLOR
    return GROUP_COLORS[int(group) % len(GROUP_COLORS)]


def _default_column_labels(columns: int) -> list[str]:
    return ["pos"] + [f"q{j}" for j in range(1, columns)]


# Heatmaps of target rows.


def plot_target_panels(
    panels: Mapping[str, torch.Tensor | np.ndarray],
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    row_groups: Sequence[int] | None = None,
    column_groups: Sequence[int] | None = None,
    annotate: bool | None = None,
    ncols: int | None = None,
) -> Figure:
    """Draw one heatmap per panel of target rows [B, 1 + K] on one colour scale.

    Args:
        panels: title -> target rows; every panel must have the same shape [B, 1 + K].
        row_labels: B names of the samples (default "0", "1", ...).
        column_labels: 1 + K names of the columns (default "pos", "q1", ..., "qK").
        row_groups: B coarse labels; they colour the row labels.
        column_groups: K coarse labels of the queue entries; they colour the column labels.
            The positive-key column is always red.
        annotate: write each value into its cell. Exact zeros stay blank, and values below
            0.005 show as ".00". The default writes them when a panel has at most 600 cells.
        ncols: panels per row of the figure (default: all in one row up to 3 panels, else 2).

    Returns:
        A Figure with one axis per panel, titled with the panel's key, in row-major order,
        and a colour bar. Unused cells of the last row are removed.

    Raises:
        ValueError: for no panels, panels of different shapes, fewer than 2 columns, negative
            or non-finite values, label lists of the wrong length, or ncols < 1.
    """
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise ValueError("panels must be a non-empty mapping of title -> target rows [B, 1 + K].")
    arrays = {str(title): _as_array(rows, f"panel {title!r}", 2) for title, rows in panels.items()}
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"all panels must have the same shape [B, 1 + K], got shapes {sorted(shapes)}.")
    for title, array in arrays.items():
        _check_target_values(array, f"panel {title!r}")
    rows, columns = shapes.pop()

    row_labels = _check_length(row_labels, rows, "row_labels", "row") if row_labels is not None \
        else [str(i) for i in range(rows)]
    column_labels = _check_length(column_labels, columns, "column_labels", "column") \
        if column_labels is not None else _default_column_labels(columns)
    if row_groups is not None:
        row_groups = _check_length(row_groups, rows, "row_groups", "row")
    if column_groups is not None:
        column_groups = _check_length(column_groups, columns - 1, "column_groups", "queue entry")
    if annotate is None:
        annotate = rows * columns <= MAX_ANNOTATED_CELLS
    if ncols is None:
        ncols = len(arrays) if len(arrays) <= 3 else 2
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}.")
    ncols = min(ncols, len(arrays))
    nrows = math.ceil(len(arrays) / ncols)

    vmax = max(float(array.max()) for array in arrays.values()) or 1.0
    width = max(2.5, 0.24 * columns + 1.2)
    height = 0.3 * rows + 1.5
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols + 1.0, height * nrows), squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(arrays):]:
        ax.remove()
    used_axes = axes.flat[: len(arrays)]
    image = None
    for ax, (title, array) in zip(used_axes, arrays.items()):
        image = ax.imshow(array, cmap=HEATMAP_CMAP, vmin=0.0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_title(title, fontsize=10)
        _label_heatmap_axes(ax, row_labels, column_labels, row_groups, column_groups)
        if annotate:
            _annotate_cells(ax, array, vmax)
    figure.colorbar(image, ax=list(used_axes), shrink=0.9, label="target weight")
    return figure


def plot_target_rows(
    targets: torch.Tensor | np.ndarray,
    *,
    title: str = "target rows",
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    row_groups: Sequence[int] | None = None,
    column_groups: Sequence[int] | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Draw a heatmap of target rows [B, 1 + K] as the single panel of ``plot_target_panels``.

    Raises:
        ValueError: for the inputs that ``plot_target_panels`` rejects.
    """
    return plot_target_panels(
        {title: targets},
        row_labels=row_labels,
        column_labels=column_labels,
        row_groups=row_groups,
        column_groups=column_groups,
        annotate=annotate,
    )


def _label_heatmap_axes(ax, row_labels, column_labels, row_groups, column_groups) -> None:
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xticks(range(len(column_labels)), column_labels, fontsize=7, rotation=90)
    ax.get_xticklabels()[0].set_color(POSITIVE_COLOR)
    if column_groups is not None:
        for tick, group in zip(ax.get_xticklabels()[1:], column_groups):
            tick.set_color(_group_color(group))
    if row_groups is not None:
        for tick, group in zip(ax.get_yticklabels(), row_groups):
            tick.set_color(_group_color(group))
    # A vertical line separates the positive key from the queue.
    ax.axvline(0.5, color=POSITIVE_COLOR, linewidth=1.0)


def _annotate_cells(ax, array: np.ndarray, vmax: float) -> None:
    for (i, j), value in np.ndenumerate(array):
        if value == 0:
            continue
        color = "white" if value > 0.6 * vmax else "black"
        ax.text(j, i, f"{value:.2f}".lstrip("0"), ha="center", va="center", fontsize=6,
                color=color)


# One sample's row over a grid of temperatures and weights.


def plot_temperature_weight_grid(
    rows: torch.Tensor | np.ndarray,
    temperatures: Sequence[float],
    weights: Sequence[float],
    *,
    same_coarse: Sequence[bool] | torch.Tensor | None = None,
    column_labels: Sequence[str] | None = None,
) -> Figure:
    """Draw one sample's target row for every (temperature, weight) pair as a bar chart.

    Args:
        rows: target rows [len(temperatures), len(weights), 1 + K].
        temperatures: the temperatures T of the grid's rows (math.inf allowed).
        weights: the weights w of the grid's columns.
        same_coarse: K bools, True where the queue entry shares the sample's coarse label;
            those bars are blue, the others grey. The positive key's bar is always red.
        column_labels: 1 + K names for the x axis (default "pos", "q1", ..., "qK").

    Returns:
        A Figure with ``len(temperatures) * len(weights)`` axes titled "T = ..., w = ...",
        in row-major order (temperatures down, weights across), on a shared y axis.

    Raises:
        ValueError: if the shape of ``rows`` does not match the grid, or a list has the
            wrong length, or a value is negative or not finite.
    """
    array = _as_array(rows, "rows", 3)
    temperatures = [float(t) for t in temperatures]
    weights = [float(w) for w in weights]
    if array.shape[:2] != (len(temperatures), len(weights)):
        raise ValueError(
            f"rows must have shape [len(temperatures), len(weights), 1 + K] = "
            f"[{len(temperatures)}, {len(weights)}, 1 + K], got {array.shape}."
        )
    _check_target_values(array, "rows")
    columns = array.shape[2]
    if same_coarse is None:
        same = [True] * (columns - 1)
    else:
        same = [bool(s) for s in _check_length(
            same_coarse.tolist() if isinstance(same_coarse, torch.Tensor) else same_coarse,
            columns - 1, "same_coarse", "queue entry")]
    column_labels = _check_length(column_labels, columns, "column_labels", "column") \
        if column_labels is not None else _default_column_labels(columns)
    colors = [POSITIVE_COLOR] + [GROUP_COLORS[0] if s else OTHER_COLOR for s in same]

    figure, axes = plt.subplots(
        len(temperatures), len(weights),
        figsize=(2.6 * len(weights) + 0.6, 1.7 * len(temperatures) + 0.6),
        sharex=True, sharey=True, squeeze=False, layout="constrained",
    )
    positions = np.arange(columns)
    for i, temperature in enumerate(temperatures):
        for j, weight in enumerate(weights):
            ax = axes[i, j]
            ax.bar(positions, array[i, j], color=colors, width=0.8)
            ax.set_title(f"T = {format_temperature(temperature)}, w = {weight:g}", fontsize=9)
            ax.set_ylim(0.0, 1.0)
            ax.tick_params(labelsize=7)
        axes[i, 0].set_ylabel("weight", fontsize=8)
    for ax in axes[-1]:
        ax.set_xticks(positions, column_labels, rotation=90, fontsize=6)
    return figure


# The sample-relation picture.


def _as_display_image(image, name: str) -> np.ndarray:
    """Convert a PIL image, an HxWx3 array or a 3xHxW tensor into an HxWx3 float array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().float().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(
            f"{name} must be an RGB image (PIL, HxWx3 array or 3xHxW tensor), got shape {array.shape}."
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"{name} has float values outside [0, 1] (range {array.min():g} to {array.max():g}); "
            f"pass uint8 pixels or undo the normalisation first."
        )
    return array


def plot_sample_relations(
    anchor_image,
    images: Sequence,
    relations: Mapping[str, torch.Tensor | np.ndarray],
    *,
    captions: Sequence[str] | None = None,
    groups: Sequence[int] | None = None,
    anchor_caption: str = "anchor",
    anchor_group: int | None = None,
    title: str | None = None,
) -> Figure:
    """Draw an anchor image, the images of its [positive key, queue] and one weight row per relation.

    The top row shows the anchor and then the 1 + K images in target order (the positive key's
    view first). Below, a heatmap has one row per relation (for example Self, Coarse, Fine and
    MaskCon) and one column per image, so each weight sits under the image it belongs to.

    Args:
        anchor_image: the sample whose target rows are shown.
        images: 1 + K images: the positive key's view, then the queue entries.
        relations: name -> weights [1 + K] over those images.
        captions: 1 + K captions under the images (for example fine class names).
        groups: 1 + K coarse labels; they colour the captions.
        anchor_caption: caption of the anchor image.
        anchor_group: coarse label of the anchor, for the colour of its caption.
        title: title of the whole figure.

    Images may be PIL images, HxWx3 uint8 arrays, or float arrays or 3xHxW tensors in [0, 1].

    Returns:
        A Figure with 2 + K image axes (the anchor first, titled by the captions) and one
        heatmap axis last, titled "target weights".

    Raises:
        ValueError: for no relations, a weight row whose length is not 1 + K, negative or
            non-finite weights, an image that is not RGB, or lists of the wrong length.
    """
    images = list(images)
    columns = len(images)
    if columns < 2:
        raise ValueError(f"images must hold the positive key and at least one queue entry, got {columns}.")
    if not isinstance(relations, Mapping) or len(relations) == 0:
        raise ValueError("relations must be a non-empty mapping of name -> weights [1 + K].")
    matrix = np.stack([_as_array(weights, f"relation {name!r}", 1) for name, weights in relations.items()])
    if matrix.shape[1] != columns:
        raise ValueError(
            f"each relation must have one weight per image (1 + K = {columns}), "
            f"got {matrix.shape[1]}."
        )
    _check_target_values(matrix, "relations")
    captions = _check_length(captions, columns, "captions", "image") if captions is not None \
        else _default_column_labels(columns)
    if groups is not None:
        groups = _check_length(groups, columns, "groups", "image")
    pictures = [_as_display_image(anchor_image, "anchor_image")]
    pictures += [_as_display_image(image, f"images[{j}]") for j, image in enumerate(images)]

    cell = 0.62
    figure = plt.figure(figsize=(cell * (columns + 1) + 1.6, cell * (len(relations) + 1) + 1.4),
                        layout="constrained")
    grid = figure.add_gridspec(2, columns + 1, height_ratios=[1.0, 0.85 * len(relations)])
    for j, picture in enumerate(pictures):
        ax = figure.add_subplot(grid[0, j])
        ax.imshow(picture, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_title(anchor_caption, fontsize=7, color=_group_color(anchor_group), fontweight="bold")
            for spine in ax.spines.values():
                spine.set_edgecolor("black")
                spine.set_linewidth(2.0)
        else:
            group = groups[j - 1] if groups is not None else None
            color = POSITIVE_COLOR if j == 1 else _group_color(group)
            ax.set_title(captions[j - 1], fontsize=6, color=color)

    heatmap = figure.add_subplot(grid[1, 1:])
    vmax = float(matrix.max()) or 1.0
    heatmap.imshow(matrix, cmap=HEATMAP_CMAP, vmin=0.0, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    heatmap.set_yticks(range(len(relations)), list(relations), fontsize=8)
    heatmap.set_xticks(range(columns), ["pos"] + [""] * (columns - 1), fontsize=7)
    heatmap.axvline(0.5, color=POSITIVE_COLOR, linewidth=1.0)
    heatmap.set_title("target weights", fontsize=9)
    _annotate_cells(heatmap, matrix, vmax)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# Results figures: training curves, the fine-mass diagnostic, 2-D maps of embeddings and
# retrieval grids (notebooks 03 and 04).

__all__ += [
    "plot_embedding_2d",
    "plot_fine_mass",
    "plot_retrieval_grid",
    "plot_training_curves",
    "project_2d",
]

# Markers of the coarse classes in a 2-D map. They repeat after the eighth coarse class.
COARSE_MARKERS = ("o", "^", "s", "D", "P", "X", "v", "*")
# A colour legend of the fine classes is drawn only up to this many classes.
MAX_LEGEND_CLASSES = 20
# Frame and caption colour of a retrieved neighbour whose fine class differs from the query's.
WRONG_COLOR = "#d62728"


def _runs_by_label(runs, name: str) -> dict[str, list[list[Mapping]]]:
    """Normalise the ``runs`` argument of the curve plots to label -> list of runs' epoch records.

    Accepted forms: one run's records (a sequence of dicts, as in ``metrics.jsonl``), a mapping
    label -> one run's records, or a mapping label -> several runs' records (one per seed).
    """
    if isinstance(runs, Mapping):
        groups = dict(runs)
    elif isinstance(runs, Sequence) and not isinstance(runs, (str, bytes)):
        groups = {"run": runs}
    else:
        raise ValueError(f"{name} must be a list of epoch records or a mapping label -> runs, "
                         f"got {type(runs).__name__}.")
    if not groups:
        raise ValueError(f"{name} is empty; pass the epoch records of at least one run.")

    normalised = {}
    for label, members in groups.items():
        members = list(members)
        if not members:
            raise ValueError(f"{name}[{label!r}] contains no epoch records.")
        if isinstance(members[0], Mapping):
            members = [members]
        for records in members:
            records = list(records)
            if not records or not all(isinstance(r, Mapping) and "epoch" in r for r in records):
                raise ValueError(
                    f"{name}[{label!r}] must contain epoch records (dicts with an 'epoch' key, as "
                    f"in metrics.jsonl), got {records[:1]!r}."
                )
        normalised[str(label)] = [list(records) for records in members]
    return normalised


def _series(runs: list[list[Mapping]], value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return epochs, means and sample standard deviations over runs of ``value(record)``.

    Epochs where ``value`` returns None or NaN for a run are left out for that run only.
    """
    by_epoch: dict[int, list[float]] = {}
    for records in runs:
        for record in records:
            number = value(record)
            if number is None or not math.isfinite(float(number)):
                continue
            by_epoch.setdefault(int(record["epoch"]), []).append(float(number))
    epochs = np.array(sorted(by_epoch), dtype=np.int64)
    means = np.array([np.mean(by_epoch[e]) for e in epochs])
    spreads = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0
                        for e in epochs])
    return epochs, means, spreads


def _draw_series(ax, epochs, means, spreads, **style) -> None:
    if len(epochs) == 0:
        return
    ax.plot(epochs, means, marker="o", markersize=3, **style)
    if np.any(spreads > 0):
        ax.fill_between(epochs, means - spreads, means + spreads, color=style.get("color"),
                        alpha=0.15, linewidth=0)


def _recall_value(record: Mapping, k: int) -> float | None:
    # metrics.jsonl stores the K values as strings, the records passed to on_epoch_end as ints.
    recall = record.get("recall", {})
    return recall.get(str(k), recall.get(k))


def _recall_ks(runs: dict[str, list[list[Mapping]]]) -> list[int]:
    ks = {int(k) for members in runs.values() for records in members for record in records
          for k in record.get("recall", {})}
    return sorted(ks)


def plot_training_curves(runs, *, ks: Sequence[int] | None = None,
                         title: str | None = None) -> Figure:
    """Draw the training loss and the fine Recall@K on the test set against the epoch.

    Args:
        runs: one run's epoch records (the rows of ``metrics.jsonl``), or a mapping label ->
            records of one run or a list of several runs (for example one per seed). Several
            runs of a label are drawn as their mean with a band of ± one sample std.
        ks: the K values of Recall@K to draw. The default is every K in the records for a
            single label, and K = 1 for several labels.
        title: title of the whole figure.

    Returns:
        A Figure with two axes, titled "training loss" and "fine Recall@K (test set)". Recall
        exists only for the scored epochs (``eval_every``), so its curve may have fewer points.

    Raises:
        ValueError: for an empty input, records without an ``epoch`` key, or a K that no
            record has.
    """
    groups = _runs_by_label(runs, "runs")
    available = _recall_ks(groups)
    if ks is None:
        ks = available if len(groups) == 1 else available[:1]
    ks = [int(k) for k in ks]
    missing = [k for k in ks if k not in available]
    if missing:
        raise ValueError(f"Recall@K for K={missing} is not in the records; available: {available}.")

    figure, (loss_ax, recall_ax) = plt.subplots(1, 2, figsize=(9.0, 3.4), layout="constrained")
    line_styles = ("-", "--", ":", "-.")
    colors = method_colors(groups)
    for label, members in groups.items():
        color = colors[label]
        epochs, means, spreads = _series(members, lambda r: r.get("loss"))
        _draw_series(loss_ax, epochs, means, spreads, color=color, label=label)
        for k_index, k in enumerate(ks):
            epochs, means, spreads = _series(members, lambda r, k=k: _recall_value(r, k))
            if len(groups) == 1:
                style = dict(color=f"C{k_index % 10}", label=f"R@{k}")
            else:
                style = dict(color=color, label=f"{label}, R@{k}")
            _draw_series(recall_ax, epochs, means * 100, spreads * 100,
                         linestyle=line_styles[k_index % len(line_styles)], **style)

    loss_ax.set_title("training loss", fontsize=10)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (epoch mean)")
    recall_ax.set_title("fine Recall@K (test set)", fontsize=10)
    recall_ax.set_xlabel("epoch")
    recall_ax.set_ylabel("Recall@K (%)")
    for ax in (loss_ax, recall_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(groups) > 1:
        loss_ax.legend(fontsize=7)
    if recall_ax.get_legend_handles_labels()[0]:
        recall_ax.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def plot_fine_mass(runs, *, title: str | None = None) -> Figure:
    """Draw the fine-mass diagnostic against the epoch: the method's targets and SupCon's.

    The fine mass of a target row is the share of its queue mass that falls on queue entries
    of the sample's own fine class. ``metrics.jsonl`` stores its epoch mean as ``fine_mass``
    (the method's targets) and ``supcon_fine_mass`` (SupCon's targets on the same queue).
    SupCon spreads the mass evenly over the sample's coarse class, so its value stays near
    the share of the sample's fine class in that coarse class. A method whose curve rises
    above it has learned to put mass on the right fine class without fine labels.

    Args:
        runs: as for ``plot_training_curves``.
        title: title of the axis (default: a description of the two line styles).

    Returns:
        A Figure with one axis. Each label has a solid line (its own targets) and a dashed line
        in the same colour (SupCon's targets on its queue). Runs without queue mass, such as
        SelfCon, have no solid line.

    Raises:
        ValueError: for an empty input or records without an ``epoch`` key.
    """
    groups = _runs_by_label(runs, "runs")
    figure, ax = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    colors = method_colors(groups)
    for label, members in groups.items():
        color = colors[label]
        epochs, means, spreads = _series(members, lambda r: r.get("fine_mass"))
        _draw_series(ax, epochs, means, spreads, color=color, label=f"{label}: its targets")
        epochs, means, spreads = _series(members, lambda r: r.get("supcon_fine_mass"))
        _draw_series(ax, epochs, means, spreads, color=color, linestyle="--",
                     label=f"{label}: SupCon targets on the same queue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("queue mass on own fine class")
    ax.set_ylim(bottom=0.0)
    ax.set_title(title or "fine mass: solid = method's targets, dashed = SupCon's", fontsize=10)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return figure


def project_2d(features, *, method: str = "auto", seed: int = 0, perplexity: float = 30.0,
               threads: int | None = 1) -> tuple[np.ndarray, str]:
    """Map L2-normalised features [N, d] to 2-D points with t-SNE or PCA.

    Args:
        features: embeddings [N, d] (tensor or array); each row is L2-normalised first, because
            retrieval compares embeddings by cosine similarity.
        method: ``"tsne"`` (needs scikit-learn), ``"pca"`` (torch only) or ``"auto"``, which
            takes t-SNE when scikit-learn is installed and PCA otherwise.
        seed: random state of t-SNE.
        perplexity: t-SNE perplexity, lowered to (N - 1) / 3 for small N.
        threads: OpenMP threads of t-SNE; None lets OpenMP choose. The default of 1 suits the
            few thousand points of a plot, where synchronising threads costs more than it saves.

    Returns:
        ``(points [N, 2] float64, name)`` where name is ``"t-SNE"`` or ``"PCA"``.

    Raises:
        ValueError: for an unknown method, fewer than 3 rows, or non-finite features.
        ImportError: for ``method="tsne"`` without scikit-learn.
    """
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}.")
    array = _as_array(features, "features", 2)
    if array.shape[0] < 3:
        raise ValueError(f"features must have at least 3 rows for a 2-D map, got {array.shape[0]}.")
    if not np.all(np.isfinite(array)):
        raise ValueError("features contain NaN or inf; check the model output.")
    array = array / np.clip(np.linalg.norm(array, axis=1, keepdims=True), 1e-12, None)

    if method == "auto":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            method = "pca"
        else:
            method = "tsne"
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as error:
            raise ImportError("method='tsne' needs scikit-learn: pip install scikit-learn, "
                              "or use method='pca'.") from error
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

        perplexity = min(float(perplexity), max(1.0, (array.shape[0] - 1) / 3))
        with threadpool_limits(limits=threads, user_api="openmp"):
            points = TSNE(n_components=2, perplexity=perplexity, init="pca",
                          learning_rate="auto", random_state=seed).fit_transform(array)
        return np.asarray(points, dtype=np.float64), "t-SNE"

    centred = torch.from_numpy(array - array.mean(axis=0, keepdims=True))
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    components = right[:2].T  # [d, min(2, d)]
    # Fix the sign of each component, which SVD leaves arbitrary, so reruns draw the same map.
    largest = components.abs().argmax(dim=0)
    signs = torch.sign(components[largest, torch.arange(components.shape[1])])
    points = (centred @ (components * torch.where(signs == 0, 1.0, signs))).numpy()
    if points.shape[1] < 2:  # features with d = 1 give one component
        points = np.concatenate([points, np.zeros((points.shape[0], 1))], axis=1)
    return points, "PCA"


def plot_embedding_2d(
    panels: Mapping[str, np.ndarray | torch.Tensor],
    fine_labels: Sequence[int] | np.ndarray | torch.Tensor,
    coarse_labels: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    fine_names: Sequence[str] | None = None,
    coarse_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw 2-D maps of the same images, coloured by fine class with one marker per coarse class.

    Args:
        panels: title -> points [N, 2] (for example from ``project_2d``), one panel per model.
            Every panel must show the same N images in the same order.
        fine_labels: N fine labels (colours).
        coarse_labels: N coarse labels (markers).
        fine_names, coarse_names: class names for the legends (default: the label numbers).
        title: title of the whole figure.

    Returns:
        A Figure with one axis per panel, titled with the panel's key. The fine-class legend
        is drawn only up to 20 fine classes, because colours repeat after that.

    Raises:
        ValueError: for no panels, points that are not [N, 2], or label lists whose length
            is not N.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty mapping of title -> points [N, 2].")
    arrays = {str(name): _as_array(points, f"panel {name!r}", 2) for name, points in panels.items()}
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1 or next(iter(shapes))[1] != 2:
        raise ValueError(
            f"every panel must have shape [N, 2] with the same N, got {sorted(shapes)}.")
    count = next(iter(shapes))[0]
    fine = np.asarray(_check_length(np.asarray(fine_labels).tolist(), count, "fine_labels",
                                    "point"), dtype=np.int64)
    coarse = np.asarray(_check_length(np.asarray(coarse_labels).tolist(), count, "coarse_labels",
                                      "point"), dtype=np.int64)
    fine_classes = sorted(set(fine.tolist()))
    coarse_classes = sorted(set(coarse.tolist()))
    fine_names = list(fine_names) if fine_names is not None else None
    coarse_names = list(coarse_names) if coarse_names is not None else None
    colormap = plt.get_cmap("tab10" if len(fine_classes) <= 10 else "tab20")

    figure, axes = plt.subplots(1, len(arrays), figsize=(4.2 * len(arrays) + 1.8, 4.2),
                                squeeze=False, layout="constrained")
    for ax, (name, points) in zip(axes[0], arrays.items()):
        for coarse_index, coarse_class in enumerate(coarse_classes):
            for fine_index, fine_class in enumerate(fine_classes):
                chosen = (coarse == coarse_class) & (fine == fine_class)
                if not chosen.any():
                    continue
                ax.scatter(points[chosen, 0], points[chosen, 1], s=9, alpha=0.75, linewidths=0,
                           color=colormap(fine_index % colormap.N),
                           marker=COARSE_MARKERS[coarse_index % len(COARSE_MARKERS)])
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])

    handles = []
    if len(fine_classes) <= MAX_LEGEND_CLASSES:
        for fine_index, fine_class in enumerate(fine_classes):
            label = fine_names[fine_class] if fine_names else str(fine_class)
            handles.append(plt.Line2D([], [], linestyle="", marker="o", markersize=5,
                                      color=colormap(fine_index % colormap.N), label=label))
    for coarse_index, coarse_class in enumerate(coarse_classes):
        label = coarse_names[coarse_class] if coarse_names else f"coarse {coarse_class}"
        handles.append(plt.Line2D([], [], linestyle="", markersize=5, color="black",
                                  marker=COARSE_MARKERS[coarse_index % len(COARSE_MARKERS)],
                                  label=label))
    figure.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def plot_retrieval_grid(
    query_images: Sequence,
    neighbour_images: Sequence[Sequence],
    query_labels: Sequence[int],
    neighbour_labels: Sequence[Sequence[int]],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw each query image followed by its nearest neighbours; wrong fine classes get a red frame.

    Args:
        query_images: Q images (PIL, HxWx3 uint8 array, or float array or 3xHxW tensor in [0, 1]).
        neighbour_images: Q lists of k images each, nearest first.
        query_labels: Q fine labels.
        neighbour_labels: Q lists of k fine labels.
        class_names: names of the fine classes, for the captions (default: the label numbers).
        title: title of the whole figure.

    Returns:
        A Figure with Q rows of 1 + k image axes. Each caption is the image's class. A
        neighbour whose fine label differs from its query's has a red frame and a red caption.

    Raises:
        ValueError: for no queries, rows of different lengths, label lists that do not match
            the images, or an image that is not RGB.
    """
    queries = list(query_images)
    if not queries:
        raise ValueError("query_images is empty; pass at least one query.")
    rows = _check_length(neighbour_images, len(queries), "neighbour_images", "query")
    query_labels = [int(label) for label in
                    _check_length(query_labels, len(queries), "query_labels", "query")]
    label_rows = _check_length(neighbour_labels, len(queries), "neighbour_labels", "query")
    k = len(list(rows[0]))
    if k < 1:
        raise ValueError("each query needs at least one neighbour.")
    rows = [_check_length(row, k, f"neighbour_images[{i}]", "neighbour")
            for i, row in enumerate(rows)]
    label_rows = [[int(label) for label in
                   _check_length(labels, k, f"neighbour_labels[{i}]", "neighbour")]
                  for i, labels in enumerate(label_rows)]

    def caption(label: int) -> str:
        return class_names[label] if class_names is not None else str(label)

    cell = 0.65  # inches per image
    figure, axes = plt.subplots(len(queries), k + 1,
                                figsize=(cell * (k + 1) + 0.4, cell * 1.2 * len(queries) + 0.5),
                                squeeze=False, layout="constrained")
    for i, (query, row) in enumerate(zip(queries, rows)):
        axes[i, 0].imshow(_as_display_image(query, f"query_images[{i}]"), interpolation="nearest")
        axes[i, 0].set_title(f"query: {caption(query_labels[i])}", fontsize=6, fontweight="bold")
        for spine in axes[i, 0].spines.values():
            spine.set_edgecolor("black")
            spine.set_linewidth(2.0)
        for j, (image, label) in enumerate(zip(row, label_rows[i]), start=1):
            ax = axes[i, j]
            picture = _as_display_image(image, f"neighbour_images[{i}][{j - 1}]")
            ax.imshow(picture, interpolation="nearest")
            wrong = label != query_labels[i]
            ax.set_title(caption(label), fontsize=6, color=WRONG_COLOR if wrong else "black")
            for spine in ax.spines.values():
                spine.set_edgecolor(WRONG_COLOR if wrong else OTHER_COLOR)
                spine.set_linewidth(2.5 if wrong else 0.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
