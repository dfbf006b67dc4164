"""Run every GPU measurement of the benchmarks page in one command and write a report.

The checks, in order:

1. Step throughput of the ``paper`` preset's shapes (ResNet-18, B=128, K=8192) with
   ``bench/bench_step.py``: float32 and bf16 autocast, each with ``channels_last`` off and on.
2. Two epochs of the ``paper`` preset through ``python -m maskcon_mini.train`` on an image
   folder shaped like CIFAR-100 (20 coarse classes of 5 fine classes, 32x32 PNG files, read from
   disk by DataLoader workers), scored once at the end. The folder is written by this script
   with random pixels, because the GPU machine has no network and no CIFAR-100 copy. Pixel
   values do not change the step time.
3. The projected time of the 200-epoch ``paper`` run on CIFAR-100. Training is 200 epochs of
   390 steps at the second epoch's time per step. Scoring is 20 scorings (``eval_every=10``) of
   the 10,000 test images, scaled linearly from the scoring time of the small test folder. The
   linear scaling is an estimate: feature extraction grows linearly with the test images, but
   the Recall@K similarity blocks grow with their square.

The report goes to ``OUT/gpu_check.md`` and ``OUT/gpu_check.json``, next to the logs of the
commands it ran (``bench_step_*.log``, ``train.log``). ``--quick`` replaces the ``paper``
shapes with the ``smoke`` preset and 2 images per class. It checks the script, and its
projection is not an estimate of a paper run. On an H200 the whole script
is expected to take about 3 minutes. NOTE: that is an estimate, because the script has run only
on a CPU with ``--device cpu --quick``.

Example:
    python bench/gpu_check.py --out "$OUT"
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu-check   # a CPU dry run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
COARSE_CLASSES = 20
FINE_PER_COARSE = 5
# The real CIFAR-100 training run of the ``paper`` preset.
PAPER_EPOCHS = 200
PAPER_TRAIN_IMAGES = 50_000
PAPER_TEST_IMAGES = 10_000
PAPER_BATCH = 128
PAPER_EVAL_EVERY = 10
PAPER_QUEUE = 8192


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the report files")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda (default) or cpu for a dry run")
    parser.add_argument("--train-per-class", type=int, default=100,
                        help="training images per fine class of the synthetic folder, at least "
                             "82 so that the paper preset's queue of 8,192 keys fills (default: 100)")
    parser.add_argument("--test-per-class", type=int, default=20,
                        help="test images per fine class of the synthetic folder (default: 20)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke preset and 2 images per class, to check the script itself "
                             "on a CPU; the per-class options are then ignored")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_per_class, args.test_per_class = 2, 2
    minimum_train = -(-PAPER_QUEUE // (COARSE_CLASSES * FINE_PER_COARSE))  # ceiling division
    if not args.quick and args.train_per_class < minimum_train:
        parser.error(f"--train-per-class must be >= {minimum_train}, so that the paper preset's "
                     f"queue of {PAPER_QUEUE} keys fills; got {args.train_per_class}.")
    if args.test_per_class < 2:
        parser.error(f"--test-per-class must be >= 2, got {args.test_per_class}.")
    return args


def write_image_folder(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> None:
    """Write ``root/{train,test}/<coarse>/<fine>/<k>.png`` with random 32x32 RGB images."""
    generator = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for coarse in range(COARSE_CLASSES):
            for fine in range(FINE_PER_COARSE):
                folder = root / split / f"coarse{coarse:02d}" / f"fine{coarse:02d}_{fine}"
                folder.mkdir(parents=True)
                for k in range(count):
                    pixels = generator.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{k}.png")


def run_logged(command: list[str], log_path: Path) -> str:
    """Run ``command`` from the repository root, save its output to ``log_path`` and return it."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    output = result.stdout + result.stderr
    log_path.write_text(output)
    print(output[-3000:], flush=True)
    if result.returncode != 0:
        program = command[2] if command[1] == "-m" else command[1]
        raise SystemExit(f"{program} failed with exit code {result.returncode}. Its output is in "
                         f"{log_path}.")
    return result.stdout


def step_benchmarks(args, out: Path) -> list[str]:
    """Run bench_step.py for float32 and bf16 and return the markdown table rows it printed."""
    steps = ["--paper-steps", "2", "--paper-warmup", "1"] if args.quick else \
        ["--paper-steps", "20", "--paper-warmup", "5"]
    presets = ["smoke"] if args.quick else ["paper"]
    rows = []
    for amp in ("none", "bf16"):
        if args.device == "cpu" and amp == "bf16":
            continue  # the trainer uses autocast on CUDA only
        command = [sys.executable, "bench/bench_step.py", "--device", args.device, "--amp", amp,
                   "--channels-last", "both", "--presets", *presets, "--methods", "maskcon",
                   "--steps", "2", "--warmup", "1", *steps]
        output = run_logged(command, out / f"bench_step_{amp}.log")
        memory_column = "" if args.device == "cuda" else " - |"  # bench_step adds it on CUDA only
        rows += [f"{line}{memory_column} {amp} |" for line in output.splitlines()
                 if line.startswith(f"| {presets[0]} ")]
    return rows


def training_epochs(args, out: Path, data_root: Path, run_dir: Path) -> dict:
    """Train two epochs of the ``paper`` preset on the synthetic folder and return the timings."""
    preset = "smoke" if args.quick else "paper"
    command = [sys.executable, "-m", "maskcon_mini.train", "--preset", preset,
               "--dataset", "imagefolder", "--data-root", str(data_root), "--out", str(run_dir / "run"),
               "--device", args.device, "--epochs", "2", "--warmup-epochs", "1", "--eval-every", "0",
               "--train-subset", "none", "--test-subset", "none", "--no-progress"]
    started = time.perf_counter()
    run_logged(command, out / "train.log")
    wall = time.perf_counter() - started

    records = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "run" / "results.json").read_text())
    steps_per_epoch = records[1]["step"] - records[0]["step"]
    return {
        "preset": preset,
        "wall_seconds": wall,
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": [record["seconds"] for record in records],
        "second_epoch_seconds_per_step": records[1]["seconds"] / steps_per_epoch,
        # The run's elapsed time is the two epochs plus the one scoring at the end.
        "scoring_seconds": results["train_seconds"] - sum(record["seconds"] for record in records),
        "recall_at_1": results["recall"]["1"],
        "amp": results["autocast"],
        "channels_last": results["channels_last"],
        "device": results["environment"].get("device"),
    }


def project_paper_run(epoch: dict, test_images: int) -> dict:
    """Project the 200-epoch CIFAR-100 run from the measured step and scoring times."""
    steps = PAPER_EPOCHS * (PAPER_TRAIN_IMAGES // PAPER_BATCH)
    training = steps * epoch["second_epoch_seconds_per_step"]
    scorings = PAPER_EPOCHS // PAPER_EVAL_EVERY
    scoring = scorings * epoch["scoring_seconds"] * PAPER_TEST_IMAGES / test_images
    return {"steps": steps, "training_hours": training / 3600, "scorings": scorings,
            "scoring_hours": scoring / 3600, "total_hours": (training + scoring) / 3600}


def write_report(out: Path, environment: dict, rows: list[str], epoch: dict, projection: dict,
                 command: str) -> None:
    """Write the markdown and JSON reports, each through a temporary file and a rename."""
    lines = [
        "# GPU check", "",
        f"Command: `{command}`", "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in environment.items()), "",
        "## Step throughput (bench/bench_step.py, median over the timed steps)", "",
        "| preset | method | shapes | channels_last | steps | median step (ms) | images/s "
        "| compute_loss forward in step, ms (share) | compute_loss forward + backward alone, ms "
        "(share) | trainer diagnostics (ms) | GFLOP per step | peak GPU memory (GiB) | autocast |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows, "",
        "## Two epochs through the trainer", "",
        f"Preset `{epoch['preset']}` on the synthetic CIFAR-100-shaped folder, device "
        f"{epoch['device']}, autocast {epoch['amp']}, channels_last {epoch['channels_last']}: "
        f"{epoch['steps_per_epoch']} steps per epoch, "
        f"epoch times {', '.join(f'{s:.1f}' for s in epoch['epoch_seconds'])} s, "
        f"{epoch['second_epoch_seconds_per_step'] * 1e3:.1f} ms per step in the second epoch, "
        f"one scoring {epoch['scoring_seconds']:.1f} s, whole command {epoch['wall_seconds']:.0f} s.", "",
        "## Projected 200-epoch paper run on CIFAR-100", "",
        *(["**Dry run (--quick): these times come from the smoke preset, so this projection "
           "says nothing about a paper run.**", ""] if epoch["preset"] != "paper" else []),
        f"{projection['steps']:,} steps: {projection['training_hours']:.2f} h of training, plus "
        f"{projection['scorings']} scorings of 10,000 test images: {projection['scoring_hours']:.2f} h. "
        f"Total {projection['total_hours']:.2f} h. This is a projection from the measured times "
        "above, not a measured run. Scoring is scaled linearly from the small test folder, which "
        "underestimates the Recall@K similarity blocks that grow with the square of the test "
        "images.", "",
        f"Load average at the end: {os.getloadavg()[0]:.2f}.", "",
    ]
    for name, text in (("gpu_check.md", "\n".join(lines)),
                       ("gpu_check.json", json.dumps({"environment": environment, "steps": rows,
                                                      "epochs": epoch, "projection": projection},
                                                     indent=2))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)


def describe_environment(device: str) -> dict:
    import torch

    environment = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                   "cpu cores": os.cpu_count(), "load average at the start": round(os.getloadavg()[0], 2),
                   "device": device}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda is not available because torch finds no CUDA device. "
                             "Use --device cpu --quick for a dry run.")
        environment["gpu"] = torch.cuda.get_device_name(0)
        environment["cuda"] = torch.version.cuda
        environment["bf16 supported"] = torch.cuda.is_bf16_supported()
    return environment


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    environment = describe_environment(args.device)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("Environment:", environment, flush=True)

    rows = step_benchmarks(args, out)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        data_root = Path(work) / "data"
        write_image_folder(data_root, args.train_per_class, args.test_per_class)
        epoch = training_epochs(args, out, data_root, Path(work))

    test_images = COARSE_CLASSES * FINE_PER_COARSE * args.test_per_class
    projection = project_paper_run(epoch, test_images)
    if not all(math.isfinite(value) for value in projection.values()):
        raise SystemExit(f"the projection is not finite: {projection}")
    write_report(out, environment, rows, epoch, projection, " ".join(["python", *sys.argv]))
    print((out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
