"""Measure two-view input throughput: JPEG files on disk versus a uint8 tensor in memory.

    python bench/bench_data.py --root .cache/test-data

``--root`` must hold the CIFAR-10 image-folder tree ``cifar10/{train,test}/<class>/``
(the test fixture ``cifar10_root`` writes it to .cache/test-data). The script loads the
CIFARtoy ("good") train set twice, once as file paths and once decoded into memory, and
wraps both in TwoViewDataset with the default views (query: strong, key: weak). For each
storage and DataLoader worker count it times ``--batches`` batches after one warm-up
batch, repeats this ``--repeats`` times with the configurations interleaved, and prints
a markdown table of the median. Images/s counts images; each image yields two views.
A second table times ``load_image`` alone (no transform, no DataLoader) to isolate the
cost of JPEG decoding.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from maskcon_mini.data import TwoViewDataset, build_dataset


def parse_args() -> argparse.Namespace:
    default_root = os.environ.get("MASKCON_TEST_DATA", ".cache/test-data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(default_root), help="data root that contains cifar10/train/")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader num_workers values to compare")
    return parser.parse_args()


def time_loader(loader_iterator, batches: int, batch_size: int) -> float:
    """Return images per second over ``batches`` batches, after one warm-up batch."""
    next(loader_iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader_iterator)
    return batches * batch_size / (time.perf_counter() - start)


def time_load_image(dataset, positions: list[int]) -> float:
    """Return images per second of ``dataset.load_image`` over ``positions``."""
    start = time.perf_counter()
    for i in positions:
        dataset.load_image(i)
    return len(positions) / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if not (args.root / "cifar10" / "train").is_dir():
        raise SystemExit(
            f"{args.root / 'cifar10' / 'train'} not found; write the CIFAR-10 tree there first "
            "(run the data tests once, or materialize_cifar10.py from the shared data folder)"
        )

    start = time.perf_counter()
    on_disk = build_dataset("cifartoy_good", root=args.root, split="train")
    list_seconds = time.perf_counter() - start
    start = time.perf_counter()
    in_memory = on_disk.to_memory()
    decode_seconds = time.perf_counter() - start

    storages = {"PIL from disk (JPEG)": on_disk, "in-memory uint8": in_memory}
    configs = [(storage, workers) for storage in storages for workers in args.workers]
    loaders = {}
    for storage, workers in configs:
        generator = torch.Generator().manual_seed(0)
        loader = DataLoader(
            TwoViewDataset(storages[storage]),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=generator,
            drop_last=True,
        )
        loaders[storage, workers] = loader

    results = {config: [] for config in configs}
    load_results = {storage: [] for storage in storages}
    positions = torch.randperm(len(on_disk), generator=torch.Generator().manual_seed(1))[: args.batches * args.batch_size]
    for _ in range(args.repeats):
        for config in configs:
            results[config].append(time_loader(iter(loaders[config]), args.batches, args.batch_size))
        for storage, dataset in storages.items():
            load_results[storage].append(time_load_image(dataset, positions.tolist()))

    print(f"CIFARtoy train: {len(on_disk)} images; file listing {list_seconds:.1f} s; "
          f"one-time in-memory decode {decode_seconds:.1f} s, {in_memory.pixels.numel() / 2**20:.0f} MiB")
    load_1min, load_5min, _ = os.getloadavg()
    print(f"Load average at the end: {load_1min:.1f} (1 min), {load_5min:.1f} (5 min)")
    print(f"CPUs: {os.cpu_count()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"Python {platform.python_version()}, batch size {args.batch_size}, "
          f"{args.batches} timed batches x {args.repeats} repeats\n")
    print("| storage | num_workers | images/s (median) | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for storage, workers in configs:
        values = results[storage, workers]
        print(f"| {storage} | {workers} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")

    print("\n| storage | load_image only, images/s (median) | min | max |")
    print("| --- | ---: | ---: | ---: |")
    for storage, values in load_results.items():
        print(f"| {storage} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")


if __name__ == "__main__":
    main()
