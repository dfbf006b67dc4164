"""The main job: train several methods with one budget and compare their fine Recall@K.

    python -m maskcon_mini.compare --preset cpu --data-root DIR --out runs/compare

trains MaskCon, SupCon (coarse labels) and SelfCon with the same preset and seeds, scores the
untrained network as the floor (and, with ``--oracle``, SupCon on fine labels as the ceiling),
and writes ``comparison.md`` (a markdown table with a per-epoch table), ``comparison.json``,
``comparison.png`` (a bar plot), ``curves.png`` (loss and R@1 per epoch) and
``fine_mass.png`` (the fine-class target mass per epoch) into the output folder. Finished
runs are kept: running the command again resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any


from .config import TrainConfig
from .report import collect_runs, markdown_table, per_epoch_table, plot_recall_bars, summarise
from .runio import CONFIG_FILE, RESULTS_FILE, environment_info, read_json, write_json
from .cli import build_parser as build_train_parser
from .cli import config_from_args
from .train import build_data, build_model, evaluate_model, resolve_device, seed_everything, train

__all__ = ["run_comparison", "evaluate_untrained", "main"]

logger = logging.getLogger("maskcon_mini.compare")

DEFAULT_METHODS = ("maskcon", "supcon", "selfcon")


def evaluate_untrained(config: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Score the randomly initialised network of ``config`` and write a run folder for it."""
    if (out_dir / RESULTS_FILE).exists():
        return collect_runs(out_dir)[0].results
    device = resolve_device(config.device)
    seed_everything(config.seed, config.deterministic)
    data = build_data(config)
    model = build_model(config, data.num_coarse_classes).to(device)
    started = time.time()
    metrics = evaluate_model(model, data.test, config, device)
    results = {
        "method": "untrained",
        "dataset": config.dataset,
        "seed": config.seed,
        "epochs": 0,
        "recall": {str(k): v for k, v in metrics["recall"].items()},
        "map_at_r": metrics["map_at_r"],
        "knn_accuracy": metrics["knn_accuracy"],
        "coarse_recall_at_1": metrics["coarse_recall_at_1"],
        "train_seconds": 0.0,
        "wall_seconds_this_call": time.time() - started,
        "environment": environment_info(device),
    }
    write_json(out_dir / CONFIG_FILE, {**config.to_dict(), "untrained": True})
    write_json(out_dir / RESULTS_FILE, results)
    return results


SETTINGS_FILE = "comparison_settings.json"

# Fields that differ between the runs of one comparison; every other field must be equal.
PER_RUN_FIELDS = ("method", "seed", "train_labels")


def check_comparison_folder(base: TrainConfig, out_dir: Path, overwrite: bool) -> None:
    """Make sure ``out_dir`` contains no runs of other settings, which the table would average in.

    The shared settings are stored in ``comparison_settings.json``. A folder with other
    settings raises ValueError unless ``overwrite`` is set, which deletes its run folders.

    Raises:
        ValueError: the folder contains a comparison with other settings, or run folders from
            an unknown source.
    """
    settings = {k: v for k, v in base.to_dict().items() if k not in PER_RUN_FIELDS}
    settings_path = out_dir / SETTINGS_FILE
    run_folders = [p.parent for p in out_dir.glob("*/config.json")] if out_dir.exists() else []
    if overwrite:
        for folder in run_folders:
            shutil.rmtree(folder)
        for name in (SETTINGS_FILE, "comparison.md", "comparison.json", "comparison.png",
                     "curves.png", "fine_mass.png"):
            (out_dir / name).unlink(missing_ok=True)
    elif settings_path.exists():
        saved = read_json(settings_path)
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise ValueError(
                f"{out_dir} contains a comparison with other settings {changed} (saved, "
                f"requested); its runs would be averaged with the new ones. Use another output "
                f"folder, or overwrite=True (--overwrite) to delete the old runs."
            )
    elif run_folders:
        raise ValueError(
            f"{out_dir} contains run folders but no {SETTINGS_FILE}, so their settings are "
            f"unknown. Use another output folder, or overwrite=True (--overwrite)."
        )
    write_json(settings_path, settings)


def run_comparison(base: TrainConfig, out_dir: str | Path, *, methods=DEFAULT_METHODS,
                   seeds=(1228,), oracle: bool = False, floor: bool = True,
                   progress: bool = True, overwrite: bool = False) -> str:
    """Train every method for every seed, score the floor, and write the comparison files.

    Finished runs in ``out_dir`` are kept and unfinished ones resumed, as long as they share
    the settings of ``base`` (see ``check_comparison_folder``).

    Returns:
        The markdown table that was written to ``comparison.md``.

    Raises:
        ValueError: ``out_dir`` contains runs of other settings and ``overwrite`` is not set.
    """
    out_dir = Path(out_dir)
    check_comparison_folder(base, out_dir, overwrite)
    jobs = [(method, seed, "coarse") for seed in seeds for method in methods]
    if oracle:
        jobs += [("supcon", seed, "fine") for seed in seeds]
    for seed in seeds:
        if floor:
            logger.info("scoring the untrained network, seed %d", seed)
            evaluate_untrained(base.replace(seed=seed), out_dir / f"untrained-seed{seed}")
    for index, (method, seed, labels) in enumerate(jobs, start=1):
        name = f"{method}{'-oracle' if labels == 'fine' else ''}-seed{seed}"
        logger.info("run %d/%d: %s", index, len(jobs), name)
        config = base.replace(method=method, seed=seed, train_labels=labels)
        train(config, out_dir / name, resume=True, progress=progress)
    return write_comparison(out_dir)


def write_comparison(out_dir: str | Path) -> str:
    """Summarise every run below ``out_dir`` into comparison.md, .json and .png."""
    out_dir = Path(out_dir)
    runs = collect_runs(out_dir)
    rows = summarise(runs)
    table = markdown_table(rows)
    environment = runs[0].results.get("environment", {}) if runs else {}
    header = (
        f"Runs: {len(runs)} in {out_dir}; torch {environment.get('torch')}, device "
        f"{environment.get('device')}, {environment.get('cpu_count')} CPUs. Fine-label "
        f"Recall@K, MAP@R and kNN accuracy in %, mean ± sample std over seeds.\n\n"
    )
    epochs = "\nPer epoch, means over seeds (fine mass: share of the target's queue mass on the " \
             "sample's own fine class):\n\n" + per_epoch_table(runs)
    (out_dir / "comparison.md").write_text(header + table + epochs, encoding="utf-8")
    write_json(out_dir / "comparison.json", [
        {**row, "recall": {str(k): v for k, v in row["recall"].items()}} for row in rows
    ])
    ks = [k for k in (1, 2, 5, 10) if rows and k in rows[0]["recall"]]
    if ks:
        plot_recall_bars(rows, out_dir / "comparison.png", ks=ks)
    _plot_curves(runs, out_dir)
    return table


def _plot_curves(runs, out_dir: Path) -> None:
    """Write curves.png (loss, R@1) and fine_mass.png over the runs that have epoch records."""
    from .plots import plot_fine_mass, plot_training_curves, save_figure

    groups: dict[str, list] = {}
    for run in runs:
        if run.metrics:
            groups.setdefault(run.label, []).append(run.metrics)
    if not groups:
        return
    save_figure(plot_training_curves(groups, ks=[1]), out_dir / "curves.png")
    with_mass = {label: members for label, members in groups.items()
                 if any("fine_mass" in record for record in members[0])}
    if with_mass:
        save_figure(plot_fine_mass(with_mass), out_dir / "fine_mass.png")


def build_parser() -> argparse.ArgumentParser:
    parser = build_train_parser(run_options=False)
    parser.prog = "python -m maskcon_mini.compare"
    parser.description = ("Train several methods with one preset and seeds, then write a "
                          "markdown table and a bar plot of fine Recall@K.")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated methods (default: maskcon,supcon,selfcon)")
    parser.add_argument("--seeds", default="1228", help="comma-separated seeds (default: 1228)")
    parser.add_argument("--oracle", action="store_true",
                        help="also train SupCon on fine labels, the ceiling")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip scoring the untrained network")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison command line; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base = config_from_args(args)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        seeds = [int(s) for s in args.seeds.split(",")]
        for method in methods:
            base.replace(method=method)
    except ValueError as error:
        parser.error(str(error))
    try:
        table = run_comparison(base, args.out, methods=methods, seeds=seeds, oracle=args.oracle,
                               floor=not args.no_floor, progress=not args.no_progress,
                               overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote comparison.md, comparison.json, comparison.png, curves.png and fine_mass.png "
          f"into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
