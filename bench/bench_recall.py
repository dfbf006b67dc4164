"""Benchmark chunked ``recall_at_k`` against the dense N x N approach: time and peak memory.

The dense approach computes the full [N, N] similarity matrix, masks its diagonal and takes
top-k. The chunked one is ``maskcon_mini.evaluate.recall_at_k``. Both run on synthetic float32
embeddings on the CPU: ``--num-labels`` class centres plus Gaussian noise.

Every case runs in a fresh subprocess, so its peak RSS (``ru_maxrss``, the high-water mark of
resident memory) is its own. The table reports that peak and its rise above the process's
current RSS after the embeddings were created (torch, the embeddings and the labels). A dense
case whose [N, N] float32 matrix alone exceeds ``--max-dense-bytes`` is not run, and the table
lists the bytes it would need.

Example:
    python bench/bench_recall.py --sizes 10000 60000 --repeats 3 --large-repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

KS = (1, 2, 5, 10, 50, 100)
# Sizes above this get --large-repeats instead of --repeats.
LARGE_SIZE = 20_000
MIB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000],
                        help="numbers of items N to compare (default: 10000 60000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size d (default: 512)")
    parser.add_argument("--num-labels", type=int, default=100,
                        help="number of labels in the synthetic data (default: 100)")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="chunk size of the chunked method (default: 1024)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case for N <= 20000 (default: 3)")
    parser.add_argument("--large-repeats", type=int, default=1,
                        help="timed runs per case for N > 20000 (default: 1)")
    parser.add_argument("--sweep-size", type=int, default=10_000,
                        help="N of the chunk-size sweep (default: 10000)")
    parser.add_argument("--sweep-chunks", type=int, nargs="*", default=[128, 512, 1024, 4096],
                        help="chunk sizes of the sweep, where an empty list skips the sweep "
                             "(default: 128 512 1024 4096)")
    parser.add_argument("--max-dense-bytes", type=float, default=None,
                        help="maximum size in bytes of the [N, N] float32 matrix that a dense "
                             "case may allocate. Larger cases are reported as not run (default: "
                             "half of MemAvailable at start, which leaves room for other "
                             "processes)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- worker process


def make_embeddings(num_items: int, dim: int, num_labels: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_labels, (num_items,), generator=generator)  # [N]
    centres = torch.randn(num_labels, dim, generator=generator)  # [L, d]
    embeddings = torch.randn(num_items, dim, generator=generator).mul_(2.0)  # [N, d]

    # Adding the centres block by block keeps temporaries small, so that they do not raise
    # the RSS high-water mark before the measured code runs.
    for start in range(0, num_items, 4096):
        embeddings[start : start + 4096] += centres[labels[start : start + 4096]]

    return embeddings, labels


def dense_recall_at_k(embeddings, labels, ks):
    """Compute Recall@K from the full [N, N] similarity matrix, the approach chunking replaces."""
    import torch.nn.functional as F

    features = F.normalize(embeddings.float(), dim=1)  # [N, d]
    similarities = features @ features.T  # [N, N]
    similarities.fill_diagonal_(float("-inf"))
    indices = similarities.topk(max(ks), dim=1).indices  # [N, max K]
    matches = labels[indices] == labels[:, None]  # [N, max K]
    return {k: matches[:, :k].any(dim=1).double().mean().item() for k in ks}


def max_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Return the current RSS from /proc/self/status, or the high-water mark without /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return max_rss_bytes()


def run_worker(case: dict) -> dict:
    from maskcon_mini.evaluate import recall_at_k

    embeddings, labels = make_embeddings(case["num_items"], case["dim"], case["num_labels"])
    baseline = current_rss_bytes()

    times, cpu_times = [], []
    for _ in range(case["repeats"]):
        started = time.perf_counter()
        cpu_started = time.process_time()
        if case["method"] == "dense":
            recall = dense_recall_at_k(embeddings, labels, KS)
        else:
            recall = recall_at_k(embeddings, labels, ks=KS, chunk_size=case["chunk_size"])
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)

    return {
        "times": times,
        "cpu_times": cpu_times,
        "baseline_rss": baseline,
        "peak_rss": max_rss_bytes(),
        "recall": {str(k): v for k, v in recall.items()},
    }


# --------------------------------------------------------------------------- parent process


def run_case(case: dict) -> dict:
    """Run one case in a fresh interpreter and return its measurements."""
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(case)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark case {case} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr}"
        )
    return {**case, **json.loads(completed.stdout.strip().splitlines()[-1])}


def available_memory_bytes() -> int | None:
    """Return MemAvailable from /proc/meminfo, or None where that file does not exist."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


def default_max_dense_bytes() -> float:
    available = available_memory_bytes()
    if available is None:
        # Without /proc/meminfo the free memory is unknown, so only small dense cases run.
        return 1e9
    return available / 2


def describe_machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


def format_mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f}"


def result_row(result: dict, dense: dict | None) -> str:
    median = statistics.median(result["times"])
    rise = result["peak_rss"] - result["baseline_rss"]
    chunk = "N" if result["method"] == "dense" else f"{result['chunk_size']:,}"

    if dense is None or result is dense:
        time_ratio = memory_ratio = "-"
    else:
        dense_rise = dense["peak_rss"] - dense["baseline_rss"]
        time_ratio = f"{median / statistics.median(dense['times']):.2f}"
        memory_ratio = f"{rise / dense_rise:.3f}"

    return (
        f"| {result['method']} | {result['num_items']:,} | {chunk} | {median:.2f} | "
        f"{statistics.median(result['cpu_times']):.2f} | {len(result['times'])} | "
        f"{format_mib(result['peak_rss'])} | {format_mib(rise)} | {time_ratio} | {memory_ratio} |"
    )


TABLE_HEADER = (
    "| method | N | chunk | median wall time (s) | median CPU time (s) | runs | peak RSS (MiB) "
    "| RSS rise (MiB) | wall time / dense | RSS rise / dense |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def compare_sizes(args: argparse.Namespace) -> list[str]:
    lines = [TABLE_HEADER]

    for num_items in args.sizes:
        repeats = args.repeats if num_items <= LARGE_SIZE else args.large_repeats
        base = {"num_items": num_items, "dim": args.dim, "num_labels": args.num_labels,
                "repeats": repeats, "chunk_size": args.chunk_size}

        dense_bytes = num_items * num_items * 4
        dense = None
        if dense_bytes <= args.max_dense_bytes:
            dense = run_case({**base, "method": "dense"})
            lines.append(result_row(dense, dense))
        else:
            lines.append(
                f"| dense | {num_items:,} | N | not run | - | 0 | - | needs {dense_bytes:,} "
                f"bytes ({dense_bytes / 1e9:.1f} GB) for the [N, N] float32 matrix | - | - |"
            )

        chunked = run_case({**base, "method": "chunked"})
        lines.append(result_row(chunked, dense))

        if dense is not None and dense["recall"] != chunked["recall"]:
            lines.append(f"\nWARNING: dense and chunked Recall@K differ at N={num_items}: "
                         f"{dense['recall']} vs {chunked['recall']}\n")

    return lines


def sweep_chunk_sizes(args: argparse.Namespace) -> list[str]:
    lines = [
        f"\nChunk-size sweep, chunked method, N={args.sweep_size:,}, {args.repeats} runs each:\n",
        "| chunk | median wall time (s) | median CPU time (s) | peak RSS (MiB) | RSS rise (MiB) "
        "| chunk x N x 4 bytes (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]

    for chunk_size in args.sweep_chunks:
        result = run_case({"num_items": args.sweep_size, "dim": args.dim,
                           "num_labels": args.num_labels, "repeats": args.repeats,
                           "chunk_size": chunk_size, "method": "chunked"})
        rise = result["peak_rss"] - result["baseline_rss"]
        block = chunk_size * args.sweep_size * 4
        lines.append(
            f"| {chunk_size:,} | {statistics.median(result['times']):.2f} | "
            f"{statistics.median(result['cpu_times']):.2f} | {format_mib(result['peak_rss'])} | "
            f"{format_mib(rise)} | {format_mib(block)} |"
        )

    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    if args.max_dense_bytes is None:
        args.max_dense_bytes = default_max_dense_bytes()

    started = time.perf_counter()
    print(f"Date: {datetime.date.today().isoformat()}")
    print(f"Machine: {describe_machine()}")
    print(f"Data: d={args.dim}, {args.num_labels} labels, float32, Recall@K for K={KS}")
    print(f"Dense cases run only if the [N, N] matrix fits in {args.max_dense_bytes / 1e9:.1f} GB "
          f"(--max-dense-bytes)\n")

    lines = compare_sizes(args)
    if args.sweep_chunks:
        lines += sweep_chunk_sizes(args)
    print("\n".join(lines))

    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s, "
          f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
