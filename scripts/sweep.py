"""Run notebook 03 for every method and seed with papermill, then notebook 04 over the runs.

    python scripts/sweep.py --methods maskcon,supcon,selfcon --seeds 1228,1229,1230 \\
        --preset cpu --out runs/sweep

writes into the output folder:

- ``<method>-seed<seed>/``: one run folder per training run (``supcon-oracle-seed<seed>/`` for
  the fine-label oracle of ``--oracle``);
- ``notebooks/03_train_cifar-<run>.ipynb``: the executed copy of notebook 03 for each run;
- ``figures/<run>/03_*.png``: the figures of each run;
- ``04_results.ipynb`` and ``figures/04_*.png``, ``figures/04_results_table.md``: the comparison.

A second call with the same options trains nothing new: notebook 03 resumes unfinished runs and
loads finished ones. With ``--preset cpu`` every run uses the full CPU budget, unless
``--quick-cpu-run`` keeps notebook 03's 2-epoch cut. Any other parameter of notebook 03 can be
set with ``-p NAME VALUE`` (for example ``-p epochs 5``). The data root comes from
``--data-root``, else from the environment variable ``MASKCON_DATA_ROOT``, else ``./data``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from maskcon_mini.cli import parse_value
from maskcon_mini.config import PRESETS
from maskcon_mini.losses import METHODS

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TRAIN_NOTEBOOK = NOTEBOOK_DIR / "03_train_cifar.ipynb"
RESULTS_NOTEBOOK = NOTEBOOK_DIR / "04_results.ipynb"
DEFAULT_METHODS = ("maskcon", "supcon", "selfcon")
# Parameters of notebook 03 that the sweep sets itself; -p may not override them.
SWEEP_PARAMETERS = ("method", "seed", "train_labels", "preset", "runs_root", "run_name",
                    "figures_dir", "resume", "quick_cpu_run", "data_root")

logger = logging.getLogger("maskcon_mini.sweep")


def plan_runs(methods: list[str], seeds: list[int], oracle: bool) -> list[dict[str, Any]]:
    """Return one entry per training run: its name, method, seed and train labels."""
    jobs = [{"name": f"{method}-seed{seed}", "method": method, "seed": seed,
             "train_labels": "coarse"} for seed in seeds for method in methods]
    if oracle:
        jobs += [{"name": f"supcon-oracle-seed{seed}", "method": "supcon", "seed": seed,
                  "train_labels": "fine"} for seed in seeds]
    return jobs


def train_parameters(job: dict[str, Any], args: argparse.Namespace, out: Path,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """Return the papermill parameters of notebook 03 for one run."""
    return {
        **extra,
        "method": job["method"],
        "seed": job["seed"],
        "train_labels": job["train_labels"],
        "preset": args.preset,
        "quick_cpu_run": args.quick_cpu_run,
        "runs_root": str(out),
        "run_name": job["name"],
        "figures_dir": str(out / "figures" / job["name"]),
        "data_root": args.data_root,
        "resume": True,
    }


def run_sweep(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    """Execute notebook 03 for each run and notebook 04 over all of them; return the exit status.

    A failed run is logged and the sweep goes on with the others. Notebook 04 then compares the
    runs that finished. The status is 1 when any notebook failed, else 0.
    """
    import papermill

    out = Path(args.out).resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    jobs = plan_runs(args.methods, args.seeds, args.oracle)
    failed = []
    for index, job in enumerate(jobs, start=1):
        output = out / "notebooks" / f"{TRAIN_NOTEBOOK.stem}-{job['name']}.ipynb"
        logger.info("run %d/%d: %s -> %s", index, len(jobs), job["name"], output)
        try:
            papermill.execute_notebook(
                str(TRAIN_NOTEBOOK), str(output),
                parameters=train_parameters(job, args, out, extra),
                kernel_name=args.kernel, cwd=str(out), progress_bar=args.progress,
            )
        except papermill.PapermillExecutionError as error:
            logger.error("run %s failed in cell %s: %s: %s (executed notebook: %s)",
                         job["name"], error.exec_count, error.ename, error.evalue, output)
            failed.append(job["name"])

    if args.no_results:
        return 1 if failed else 0
    if len(failed) == len(jobs):
        logger.error("every run failed, so notebook 04 is skipped")
        return 1
    output = out / RESULTS_NOTEBOOK.name
    logger.info("comparing the runs in %s -> %s", out, output)
    try:
        papermill.execute_notebook(
            str(RESULTS_NOTEBOOK), str(output),
            parameters={"runs_dir": str(out), "figures_dir": str(out / "figures"),
                        "data_root": args.data_root},
            kernel_name=args.kernel, cwd=str(out), progress_bar=args.progress,
        )
    except papermill.PapermillExecutionError as error:
        logger.error("notebook 04 failed in cell %s: %s: %s (executed notebook: %s)",
                     error.exec_count, error.ename, error.evalue, output)
        return 1
    if failed:
        logger.error("%d of %d runs failed: %s", len(failed), len(jobs), ", ".join(failed))
        return 1
    logger.info("done: %s and %s", out / "figures" / "04_results_table.md", output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/sweep.py",
        description="Train every method for every seed by running notebook 03 with papermill, "
                    "then compare the runs with notebook 04.",
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated methods (default: maskcon,supcon,selfcon)")
    parser.add_argument("--seeds", default="1228", help="comma-separated seeds (default: 1228)")
    parser.add_argument("--preset", default="cpu",
                        help="preset of every run: auto, paper, colab, cpu or smoke (default: cpu)")
    parser.add_argument("--out", default="runs/sweep",
                        help="folder for the run folders, notebooks and figures (default: runs/sweep)")
    parser.add_argument("--data-root", default=os.environ.get("MASKCON_DATA_ROOT", "./data"),
                        help="data folder (default: $MASKCON_DATA_ROOT, else ./data)")
    parser.add_argument("--oracle", action="store_true",
                        help="also train SupCon on fine labels for every seed, the upper reference")
    parser.add_argument("--quick-cpu-run", action="store_true",
                        help="keep notebook 03's cut of the cpu preset to 2 epochs on 500 images "
                             "per fine class")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="another parameter of notebook 03, for example -p epochs 5")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")
    parser.add_argument("--no-results", action="store_true", help="skip notebook 04")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide papermill's progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse and check the command line; return the options and the extra notebook parameters."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}.")
    if not args.methods or not args.seeds:
        parser.error("--methods and --seeds need at least one value each.")
    unknown = [method for method in args.methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(METHODS)}.")
    if args.preset != "auto" and args.preset not in PRESETS:
        parser.error(f"--preset must be 'auto' or one of {list(PRESETS)}, got {args.preset!r}.")
    args.data_root = str(Path(args.data_root).resolve())
    extra = {}
    for name, value in args.parameter:
        if name in SWEEP_PARAMETERS:
            parser.error(f"-p {name} is set by the sweep itself; use its own option instead "
                         f"(see --help).")
        extra[name] = parse_value(value)
    return args, extra


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, extra = parse_args(argv)
    return run_sweep(args, extra)


if __name__ == "__main__":
    sys.exit(main())
