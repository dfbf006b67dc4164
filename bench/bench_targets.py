"""Benchmark ``maskcon_targets`` against the official code's formulation: time and peak memory.

The reference formulation (``reference_maskcon_targets`` below) follows the soft-label block of
``MaskCon.forward`` in the official code (github.com/MrChenFeng/MaskCon_CVPR2023,
models/model.py). It repeats both label vectors to [B, K] int64 matrices and compares them
into a float mask. It multiplies ``exp(sim / T - max)`` by the mask and divides by the row sum
and then by the row max. Last, it prepends the positive column, normalises each row and mixes
it with the one-hot SelfCon row. Both functions get the same float32 inputs on the CPU:
L2-normalised random keys and queue keys and random coarse labels. Every row has same-coarse
queue entries, because the reference divides 0 by 0 on rows that have none.

Time: both functions run interleaved in this process (wall and CPU time, median of
``--repeats`` after one warm-up call each), so load from other jobs spreads over both.

Peak memory: every (method, K, mask) case runs once more in a fresh subprocess, started with
``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB. glibc then serves every tensor above that size with
its own ``mmap`` and returns it to the OS when torch frees it, so the resident set follows the
live tensors and its high-water mark is the peak of live memory. With glibc's default dynamic
threshold, freed blocks up to 32 MiB stay in the heap and a later block can reuse or fragment
them. Just before the measured call (torch imported, inputs built, one small warm-up call made)
the worker writes 5 to ``/proc/self/clear_refs``, which resets the high-water mark ``VmHWM`` to
the current RSS. The table reports ``VmHWM`` after the call minus that RSS. ``ru_maxrss`` is not
used, because after ``exec`` it can carry the parent process's high-water mark.

Example:
    python bench/bench_targets.py --queue-sizes 4096 8192 16384 65536 --repeats 9
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MIB = 1024 * 1024
# Fixed glibc mmap threshold of the memory subprocesses; see the module docstring.
MMAP_THRESHOLD_BYTES = 128 * 1024
METHODS = ("ours", "reference")
MASKS = ("none", "per-sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128, help="B (default: 128)")
    parser.add_argument("--dim", type=int, default=256, help="key dimension d (default: 256)")
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=[4096, 8192, 16384, 65536],
                        help="queue sizes K (default: 4096 8192 16384 65536)")
    parser.add_argument("--num-labels", type=int, default=20,
                        help="number of coarse labels (default: 20, as CIFAR-100)")
    parser.add_argument("--temperature", type=float, default=0.05,
                        help="target temperature T (default: 0.05, the official value)")
    parser.add_argument("--weight", type=float, default=0.5,
                        help="mixing weight w (default: 0.5, the official value)")
    parser.add_argument("--masks", nargs="+", choices=MASKS, default=["none"],
                        help="queue masks to compare: none, or per-sample [B, K] as the model "
                             "passes it (default: none)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="timed calls per method and case (default: 9)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- both formulations


def reference_maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight,
                              queue_mask=None):
    """Reference formulation: the official code's soft-label block, without its CUDA calls.

    ``queue_mask`` (bool [B, K]) is an addition for the per-sample case; the official code has
    no mask. NOTE: a row without any same-coarse entry gives 0 / 0 = NaN here.
    """
    import torch

    with torch.no_grad():
        batch_size, queue_size = keys.shape[0], queue_keys.shape[0]
        coarse_mask = torch.ones(batch_size, queue_size)  # [B, K]
        batch_labels = labels.reshape(-1, 1).repeat(1, queue_size)  # [B, K] int64
        memory_labels = queue_labels.reshape(1, -1).repeat(batch_size, 1)  # [B, K] int64
        coarse_mask = coarse_mask * (batch_labels == memory_labels)
        if queue_mask is not None:
            coarse_mask = coarse_mask * queue_mask

        logits = torch.einsum("nc,ck->nk", [keys, queue_keys.T])  # [B, K]
        logits /= temperature
        logits = logits * coarse_mask
        logits = logits - logits.max(dim=1, keepdim=True)[0]
        soft = logits.exp() * coarse_mask
        soft_sum = torch.sum(soft, dim=1, keepdim=True)

        maskcon = torch.zeros(batch_size, queue_size + 1)  # [B, 1+K]
        maskcon[:, 0] = 1
        scaled = soft / soft_sum
        scaled = scaled / scaled.max(dim=1, keepdim=True)[0]
        maskcon[:, 1:] = scaled
        maskcon = maskcon / maskcon.sum(dim=1, keepdim=True)

        selfcon = torch.zeros(batch_size, queue_size + 1)  # [B, 1+K]
        selfcon[:, 0] = 1.0
        return weight * maskcon + (1 - weight) * selfcon


def make_inputs(batch_size: int, queue_size: int, dim: int, num_labels: int, mask: str,
                dtype=None):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(queue_size)
    keys = F.normalize(torch.randn(batch_size, dim, generator=generator), dim=1)  # [B, d]
    queue_keys = F.normalize(torch.randn(queue_size, dim, generator=generator), dim=1)  # [K, d]
    labels = torch.randint(0, num_labels, (batch_size,), generator=generator)  # [B]
    queue_labels = torch.randint(0, num_labels, (queue_size,), generator=generator)  # [K]
    # Every label appears in the queue, so that no reference row divides 0 by 0.
    queue_labels[:num_labels] = torch.arange(num_labels)
    queue_mask = None
    if mask == "per-sample":
        # About 0.1% of each row's slots are masked at random. The model masks the sample's own
        # stale keys, fewer than that, but time and memory depend only on the mask's shape.
        queue_mask = torch.rand(batch_size, queue_size, generator=generator) > 0.001
        queue_mask[:, :num_labels] = True
    if dtype is not None:
        keys, queue_keys = keys.to(dtype), queue_keys.to(dtype)
    return keys, queue_keys, labels, queue_labels, queue_mask


def call(method: str, inputs, temperature: float, weight: float):
    from maskcon_mini.targets import maskcon_targets

    keys, queue_keys, labels, queue_labels, queue_mask = inputs
    if method == "ours":
        return maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight,
                               queue_mask=queue_mask)
    return reference_maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight,
                                     queue_mask=queue_mask)


# --------------------------------------------------------------------------- memory subprocess


def read_status_bytes(field: str) -> int:
    """Return a memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status; the memory cases need Linux.")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def run_memory_worker(case: dict) -> dict:
    import torch

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    # A small warm-up call starts the thread pool and loads the kernels before the baseline.
    small = make_inputs(case["batch_size"], 256, case["dim"], case["num_labels"], case["mask"])
    call(case["method"], small, case["temperature"], case["weight"])
    del small

    inputs = make_inputs(case["batch_size"], case["queue_size"], case["dim"],
                         case["num_labels"], case["mask"])
    reset_peak_rss()
    baseline = read_status_bytes("VmRSS")
    result = call(case["method"], inputs, case["temperature"], case["weight"])
    return {"baseline_rss": baseline, "peak_rss": read_status_bytes("VmHWM"),
            "result_bytes": result.numel() * result.element_size()}


def measure_memory(case: dict) -> dict:
    """Run one case in a fresh interpreter with a fixed mmap threshold; return its RSS numbers."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(case)],
        capture_output=True, text=True, check=False, env=env,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory case {case} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timing


def time_interleaved(inputs, args) -> dict[str, dict[str, list[float]]]:
    """Time both methods alternately; return wall and CPU seconds per method."""
    times = {method: {"wall": [], "cpu": []} for method in METHODS}
    for method in METHODS:
        call(method, inputs, args.temperature, args.weight)  # warm-up
    for repeat in range(args.repeats):
        # Alternate which method goes first, so that neither always follows the other.
        order = METHODS if repeat % 2 == 0 else METHODS[::-1]
        for method in order:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            call(method, inputs, args.temperature, args.weight)
            times[method]["wall"].append(time.perf_counter() - wall_start)
            times[method]["cpu"].append(time.process_time() - cpu_start)
    return times


def max_differences(inputs, args) -> tuple[float, float]:
    """Return max |ours - reference64| and max |reference32 - reference64| over all entries."""
    keys, queue_keys, labels, queue_labels, queue_mask = inputs
    reference64 = reference_maskcon_targets(keys.double(), queue_keys.double(), labels,
                                            queue_labels, args.temperature, args.weight,
                                            queue_mask=queue_mask)
    # The reference builds its float mask in float32; the float64 copy keeps every product exact.
    ours = call("ours", inputs, args.temperature, args.weight).double()
    reference32 = call("reference", inputs, args.temperature, args.weight).double()
    return (float((ours - reference64).abs().max()),
            float((reference32 - reference64).abs().max()))


# --------------------------------------------------------------------------- report


def describe_machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device cpu, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_memory_worker(json.loads(args.worker))))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"Date: {datetime.date.today().isoformat()}")
    print(f"Machine: {describe_machine()}")
    print(f"Load average at the start: {os.getloadavg()[0]:.2f}")
    print(f"B={args.batch_size}, d={args.dim}, {args.num_labels} coarse labels, "
          f"T={args.temperature}, w={args.weight}, float32, {args.repeats} timed calls per "
          f"method after one warm-up\n")

    print("| K | queue mask | method | median wall (ms) | median CPU (ms) | peak RSS rise (MiB) "
          "| rise / [B, K] float32 | max abs diff to float64 reference "
          "| wall ours / ref | CPU ours / ref | RSS rise ours / ref |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for queue_size in args.queue_sizes:
        for mask in args.masks:
            inputs = make_inputs(args.batch_size, queue_size, args.dim, args.num_labels, mask)
            times = time_interleaved(inputs, args)
            ours_diff, reference_diff = max_differences(inputs, args)
            del inputs
            memory = {}
            for method in METHODS:
                case = {"method": method, "queue_size": queue_size, "mask": mask,
                        "batch_size": args.batch_size, "dim": args.dim,
                        "num_labels": args.num_labels, "temperature": args.temperature,
                        "weight": args.weight, "threads": args.threads}
                memory[method] = measure_memory(case)

            matrix_bytes = args.batch_size * queue_size * 4
            rise = {m: memory[m]["peak_rss"] - memory[m]["baseline_rss"] for m in METHODS}
            wall = {m: statistics.median(times[m]["wall"]) for m in METHODS}
            cpu = {m: statistics.median(times[m]["cpu"]) for m in METHODS}
            for method, diff in (("ours", ours_diff), ("reference", reference_diff)):
                ratios = "- | - | -"
                if method == "ours":
                    ratios = (f"{wall['ours'] / wall['reference']:.2f} | "
                              f"{cpu['ours'] / cpu['reference']:.2f} | "
                              f"{rise['ours'] / rise['reference']:.2f}")
                print(f"| {queue_size:,} | {mask} | {method} | {wall[method] * 1e3:.1f} | "
                      f"{cpu[method] * 1e3:.1f} | {rise[method] / MIB:.1f} | "
                      f"{rise[method] / matrix_bytes:.1f} | {diff:.1e} | {ratios} |")

    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s, "
          f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
