"""Measure the share of a training step that waits for the input pipeline, with the real trainer.

    python bench/bench_pipeline.py --root .cache/test-data --batches 8 --repeats 3

``--root`` must hold the CIFAR-10 image-folder tree ``cifar10/{train,test}/<class>/`` (the test
fixture ``cifar10_root`` writes it to .cache/test-data). The script builds the data, model and
optimiser of a preset exactly as ``maskcon_mini.train.train`` does (``build_data``,
``build_model``, ``make_loader``), except that the queue is pre-filled with random keys in place
of a key-encoder pass. Each repeat then times, interleaved:

- load: a fresh iterator of the real training DataLoader (``num_workers`` of the preset),
  timed from ``iter()`` to its ``--batches``-th batch, with no model work;
- compute: ``train.train_one_epoch`` over those same batches, held in a list, so it runs the
  trainer's per-step work (momentum update, both encoders, loss, backward, SGD step, and the
  per-step diagnostics) with no loading;
- real loop: ``train.train_one_epoch`` over the first ``--batches`` batches of a fresh real
  DataLoader, once for each ``--workers`` value. With ``num_workers=0`` loading and compute
  run one after the other in one process, so this should take about load + compute.

A fresh DataLoader iterator is what the trainer starts every epoch (``persistent_workers`` is
off), so with workers the real-loop time includes starting them. An epoch of the `cpu` preset
has 39 batches, so over a whole epoch that start-up weighs less than over ``--batches``.
Images/s counts images; each image yields a query and a key view.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maskcon_mini.config import make_config
from maskcon_mini.losses import LossSettings
from maskcon_mini.train import build_data, build_model, make_loader, train_one_epoch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_root = os.environ.get("MASKCON_TEST_DATA", ".cache/test-data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(default_root),
                        help="data root that contains cifar10/train/")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "smoke"],
                        help="preset whose data, model and loader to use (default: cpu)")
    parser.add_argument("--method", default="maskcon", help="training method (default: maskcon)")
    parser.add_argument("--batches", type=int, default=8,
                        help="batches per timed part (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="num_workers values of the real-loop rows (default: 0 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in the main process (default: torch's "
                             "default)")
    return parser.parse_args(argv)


class FirstBatches:
    """The first ``count`` batches of a DataLoader, with the ``len`` that the trainer reads."""

    def __init__(self, loader, count: int) -> None:
        self.loader = loader
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.count)


def fill_queue_randomly(model, num_classes: int, dataset_size: int, batch_size: int) -> None:
    queue = model.queue
    keys = F.normalize(torch.randn(queue.size, queue.dim), dim=1)  # [K, d]
    labels = torch.randint(0, num_classes, (queue.size,))  # [K]
    indices = torch.randint(0, dataset_size, (queue.size,))  # [K]
    for start in range(0, queue.size, batch_size):
        stop = min(start + batch_size, queue.size)
        queue.enqueue(keys[start:stop], labels[start:stop], indices[start:stop])


class Trainer:
    """The trainer's objects for one preset, and the three timed parts."""

    def __init__(self, args) -> None:
        self.args = args
        self.config = make_config(args.preset, method=args.method, data_root=str(args.root),
                                  device="cpu")
        self.device = torch.device("cpu")
        started = time.perf_counter()
        self.data = build_data(self.config)
        self.build_seconds = time.perf_counter() - started
        torch.manual_seed(self.config.seed)
        self.model = build_model(self.config, self.data.num_coarse_classes)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr,
                                         momentum=self.config.sgd_momentum,
                                         weight_decay=self.config.weight_decay)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.settings = LossSettings(self.config.method, self.config.contrastive_temperature,
                                     self.config.target_temperature, self.config.weight)
        fill_queue_randomly(self.model, self.data.num_coarse_classes, len(self.data.train),
                            self.config.batch_size)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.state = {"epoch": 0, "step": 0, "elapsed": 0.0}

    def loader(self, num_workers: int):
        config = self.config.replace(num_workers=num_workers)
        return make_loader(self.data.train, config, self.generator, shuffle=True, drop_last=True)

    def run_epoch(self, batches) -> float:
        steps_per_epoch = len(self.data.train) // self.config.batch_size
        start = time.perf_counter()
        train_one_epoch(self.model, batches, self.optimizer, self.scaler, self.settings,
                        self.config, self.data, self.device, self.state,
                        total_steps=self.config.epochs * steps_per_epoch,
                        warmup_steps=self.config.warmup_epochs * steps_per_epoch, progress=False)
        return time.perf_counter() - start

    def load(self) -> tuple[float, list]:
        start = time.perf_counter()
        batches = list(itertools.islice(iter(self.loader(self.config.num_workers)),
                                        self.args.batches))
        return time.perf_counter() - start, batches


def describe_machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device cpu, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.root / "cifar10" / "train").is_dir():
        raise SystemExit(
            f"{args.root / 'cifar10' / 'train'} not found; write the CIFAR-10 tree there first "
            "(run the data tests once, or materialize_cifar10.py from the shared data folder)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    print(f"Date: {datetime.date.today().isoformat()}")
    print(f"Machine: {describe_machine()}")
    print(f"Load average at the start: {os.getloadavg()[0]:.2f}")
    trainer = Trainer(args)
    config = trainer.config
    print(f"Preset {args.preset}, method {args.method}: {config.dataset}, "
          f"{len(trainer.data.train)} training images, in_memory={config.in_memory}, "
          f"num_workers={config.num_workers}, {config.backbone} (width {config.width}), "
          f"B={config.batch_size}, K={config.queue_size}; data built in "
          f"{trainer.build_seconds:.1f} s")
    print(f"{args.batches} batches per part, {args.repeats} repeats\n")

    # One untimed pass of each part first, so that no timed part pays for first calls.
    _, warmup_batches = trainer.load()
    trainer.run_epoch(warmup_batches[:2])

    results: dict[str, list[float]] = {"load": [], "compute": []}
    results.update({f"real loop, num_workers={workers}": [] for workers in args.workers})
    for _ in range(args.repeats):
        seconds, batches = trainer.load()
        results["load"].append(seconds)
        results["compute"].append(trainer.run_epoch(batches))
        for workers in args.workers:
            loop = FirstBatches(trainer.loader(workers), args.batches)
            results[f"real loop, num_workers={workers}"].append(trainer.run_epoch(loop))

    images = args.batches * config.batch_size
    load, compute = statistics.median(results["load"]), statistics.median(results["compute"])
    print("| part | median time per batch (ms) | images/s | min (ms) | max (ms) "
          "| share of load + compute |")
    print("|---|---:|---:|---:|---:|---:|")
    for part, values in results.items():
        per_batch = statistics.median(values) / args.batches
        share = {"load": f"{load / (load + compute):.0%}",
                 "compute": f"{compute / (load + compute):.0%}"}.get(part, "-")
        print(f"| {part} | {per_batch * 1e3:,.0f} | {images / statistics.median(values):,.0f} | "
              f"{min(values) / args.batches * 1e3:,.0f} | {max(values) / args.batches * 1e3:,.0f} "
              f"| {share} |")
    print(f"\nload + compute per batch: {(load + compute) / args.batches * 1e3:,.0f} ms")
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s, "
          f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
