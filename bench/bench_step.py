"""Benchmark one full training step per method: images/s and the share of targets and loss.

One step is what ``maskcon_mini.train.train_one_epoch`` runs per batch, without its logging.
That is ``MomentumContrast.forward`` (momentum update, key forward, query forward, targets,
loss, enqueue) under the optional autocast, then ``zero_grad``, backward and an SGD step. The
model, optimiser and loss settings come from a preset through ``make_config`` and
``build_model``. The inputs are synthetic: two random 32x32 views per image, random coarse
labels, and a queue that is pre-filled with random L2-normalised keys, labels and sample
indices, so that every step uses all K entries. Images/s counts images, each with a query and
a key view.

For each case the script reports:

- the median step time over ``--steps`` steps after ``--warmup`` steps, and B / that time;
- the time of ``compute_loss`` inside those steps (forward only: logits, targets, soft
  cross-entropy), measured by wrapping the function the model calls;
- the forward and backward time of ``compute_loss`` alone on the same shapes, with the model's
  own queue and per-sample mask. This is the time the step spends on targets and loss;
- the time of the trainer's per-step diagnostics (``train._step_diagnostics``, SupCon targets
  and fine-mass shares on the step's device), which the trainer runs after every step, outside the step;
- the matmul and convolution FLOPs of one step (``torch.utils.flop_counter``, counted on the
  first warm-up step).

The script is device-agnostic: ``--device cuda --amp bf16 --channels-last on`` measures the
GPU case. On CUDA it synchronises before reading every clock and adds the peak allocated
memory per case. NOTE: only the CPU path has run so far; the CUDA and MPS paths are untested.

Example:
    python bench/bench_step.py --presets cpu paper --steps 5 --paper-steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import maskcon_mini.model as model_module
from maskcon_mini.config import make_config
from maskcon_mini.losses import METHODS, LossBatch, LossSettings, compute_loss
from maskcon_mini.train import EpochStats, RunData, _step_diagnostics, build_model, resolve_device

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Number of coarse classes of each dataset, which sets the label range and the CoIns head.
COARSE_CLASSES = {"cifartoy_good": 2, "cifartoy_bad": 2, "cifar100": 20, "imagefolder": 20}
# Training-set size of each preset's data, which sets the range of the sample indices. The `cpu`,
# `paper` and `colab` presets use all 40,000 CIFARtoy training images.
DATASET_SIZES = {"cpu": 40_000, "paper": 40_000, "colab": 40_000, "smoke": 128}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu", "paper"],
                        choices=["cpu", "paper", "colab", "smoke"],
                        help="presets whose shapes to run (default: cpu paper)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="methods at the `cpu` preset (default: all five)")
    parser.add_argument("--paper-methods", nargs="+", default=["maskcon"],
                        choices=list(METHODS),
                        help="methods at the other presets (default: maskcon)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument("--amp", default="none", choices=list(AMP_DTYPES),
                        help="autocast dtype of the step (default: none, float32)")
    parser.add_argument("--channels-last", default="both", choices=["on", "off", "both"],
                        help="memory format of model and images (default: both)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark (the trainer leaves it off)")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps per case at the `cpu` and `smoke` presets (default: 5)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="warm-up steps per case at the `cpu` and `smoke` presets (default: 2)")
    parser.add_argument("--paper-steps", type=int, default=3,
                        help="timed steps per case at the ResNet presets (default: 3)")
    parser.add_argument("--paper-warmup", type=int, default=1,
                        help="warm-up steps per case at the ResNet presets (default: 1)")
    parser.add_argument("--loss-repeats", type=int, default=5,
                        help="timed calls of compute_loss alone per case (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads on the CPU (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class LossTimer:
    """Wrap ``compute_loss`` where the model calls it and record its forward time per call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []

    def __call__(self, batch: LossBatch, settings: LossSettings):
        synchronize(self.device)
        start = time.perf_counter()
        result = compute_loss(batch, settings)
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        return result


class Case:
    """Model, optimiser and synthetic inputs of one (preset, method, memory format) case."""

    def __init__(self, preset: str, method: str, channels_last: bool, args, device):
        torch.manual_seed(args.seed)
        self.config = make_config(preset, method=method, device=device.type)
        self.device = device
        self.dtype = AMP_DTYPES[args.amp]
        self.settings = LossSettings(method, self.config.contrastive_temperature,
                                     self.config.target_temperature, self.config.weight)
        self.num_classes = COARSE_CLASSES[self.config.dataset]
        self.dataset_size = DATASET_SIZES[preset]
        batch_size, size = self.config.batch_size, self.config.image_size
        memory_format = torch.channels_last if channels_last else torch.contiguous_format

        self.model = build_model(self.config, self.num_classes).to(device)
        self.model = self.model.to(memory_format=memory_format)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr,
                                         momentum=self.config.sgd_momentum,
                                         weight_decay=self.config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

        self.query_images = torch.randn(batch_size, 3, size, size, device=device)
        self.key_images = torch.randn(batch_size, 3, size, size, device=device)
        self.query_images = self.query_images.contiguous(memory_format=memory_format)
        self.key_images = self.key_images.contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, self.num_classes, (batch_size,), device=device)
        self.indices = torch.randperm(self.dataset_size, device=device)[:batch_size]
        self.fine = torch.randint(0, 4 * self.num_classes, (batch_size,))
        self.fill_queue()

    def fill_queue(self) -> None:
        queue = self.model.queue
        keys = F.normalize(torch.randn(queue.size, queue.dim, device=self.device), dim=1)
        labels = torch.randint(0, self.num_classes, (queue.size,), device=self.device)
        indices = torch.randint(0, self.dataset_size, (queue.size,), device=self.device)
        for start in range(0, queue.size, self.config.batch_size):
            stop = min(start + self.config.batch_size, queue.size)
            queue.enqueue(keys[start:stop], labels[start:stop], indices[start:stop])

    def step(self):
        """Run one training step and return the model's output dict."""
        with autocast(self.device, self.dtype):
            output = self.model(self.query_images, self.key_images, self.labels, self.indices,
                                self.settings)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(output["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return output

    def loss_forward_backward(self) -> float:
        """Time compute_loss forward and backward alone on this case's shapes, in seconds."""
        queue_keys, queue_labels, queue_indices, valid = self.model.queue.snapshot()
        queue_mask = valid[None, :] & (queue_indices[None, :] != self.indices[:, None])  # [B, K]
        queries = F.normalize(torch.randn(self.config.batch_size, self.model.queue.dim,
                                          device=self.device), dim=1).requires_grad_()
        keys = F.normalize(torch.randn_like(queries), dim=1)
        class_logits = None
        if self.settings.method == "coins":
            class_logits = torch.randn(self.config.batch_size, self.num_classes,
                                       device=self.device, requires_grad=True)
        batch = LossBatch(queries, keys, queue_keys, self.labels, queue_labels, queue_mask,
                          class_logits)
        synchronize(self.device)
        start = time.perf_counter()
        compute_loss(batch, self.settings).loss.backward()
        synchronize(self.device)
        return time.perf_counter() - start

    def diagnostics(self, output) -> float:
        """Time the trainer's per-step diagnostics on ``output``, in seconds."""
        data = RunData(train=None, test=None,
                       train_labels=torch.randint(0, self.num_classes, (self.dataset_size,)),
                       fine_labels=torch.randint(0, 4 * self.num_classes, (self.dataset_size,)),
                       num_coarse_classes=self.num_classes)
        tables = (data.train_labels.to(self.device), data.fine_labels.to(self.device))
        fine = self.fine.to(self.device)
        synchronize(self.device)
        start = time.perf_counter()
        stats = EpochStats()
        _step_diagnostics(output, self.labels, fine, tables, stats)
        synchronize(self.device)
        return time.perf_counter() - start


def run_case(preset: str, method: str, channels_last: bool, args, device) -> dict:
    case = Case(preset, method, channels_last, args, device)
    resnet = case.config.backbone.startswith("resnet")
    warmup = args.paper_warmup if resnet else args.warmup
    steps = args.paper_steps if resnet else args.steps

    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        case.step()
    for _ in range(warmup - 1):
        case.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    loss_timer = LossTimer(device)
    original = model_module.compute_loss
    model_module.compute_loss = loss_timer
    step_seconds, diagnostic_seconds = [], []
    try:
        for _ in range(steps):
            synchronize(device)
            start = time.perf_counter()
            output = case.step()
            synchronize(device)
            step_seconds.append(time.perf_counter() - start)
            diagnostic_seconds.append(case.diagnostics(output))
    finally:
        model_module.compute_loss = original

    loss_seconds = [case.loss_forward_backward() for _ in range(args.loss_repeats + 1)][1:]
    return {
        "preset": preset,
        "method": method,
        "channels_last": channels_last,
        "config": case.config,
        "steps": steps,
        "step": statistics.median(step_seconds),
        "step_min": min(step_seconds),
        "loss_in_step": statistics.median(loss_timer.seconds),
        "loss_alone": statistics.median(loss_seconds),
        "diagnostics": statistics.median(diagnostic_seconds),
        "gflop": flop_counter.get_total_flops() / 1e9,
        "peak_gpu": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def describe_machine(device: torch.device) -> str:
    text = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"device {device.type}"
    )
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


def format_row(result: dict, device: torch.device) -> str:
    config = result["config"]
    shapes = (f"{config.backbone}" + (f" w{config.width}" if config.backbone == "convnet" else "")
              + f", B={config.batch_size}, K={config.queue_size}, d={config.projection_dim}")
    step = result["step"]
    row = (
        f"| {result['preset']} | {result['method']} | {shapes} | "
        f"{'on' if result['channels_last'] else 'off'} | {result['steps']} | "
        f"{step * 1e3:,.0f} | {config.batch_size / step:,.0f} | "
        f"{result['loss_in_step'] * 1e3:,.1f} ({result['loss_in_step'] / step:.1%}) | "
        f"{result['loss_alone'] * 1e3:,.1f} ({result['loss_alone'] / step:.1%}) | "
        f"{result['diagnostics'] * 1e3:,.1f} | {result['gflop']:,.0f} |"
    )
    if device.type == "cuda":
        row += f" {result['peak_gpu'] / 2**30:.2f} |"
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    formats = {"on": [True], "off": [False], "both": [False, True]}[args.channels_last]

    started = time.perf_counter()
    print(f"Date: {datetime.date.today().isoformat()}")
    print(f"Machine: {describe_machine(device)}")
    print(f"Load average at the start: {os.getloadavg()[0]:.2f}")
    print(f"Autocast: {args.amp}; cudnn.benchmark: {torch.backends.cudnn.benchmark}; "
          f"steps after warm-up: {args.steps} (cpu, smoke), {args.paper_steps} (ResNet presets); "
          f"compute_loss alone: {args.loss_repeats} calls\n")

    header = ("| preset | method | shapes | channels_last | steps | median step (ms) | images/s "
              "| compute_loss forward in step, ms (share) | compute_loss forward + backward "
              "alone, ms (share) | trainer diagnostics (ms) | GFLOP per step |")
    rule = "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if device.type == "cuda":
        header += " peak GPU memory (GiB) |"
        rule += "---:|"
    print(header)
    print(rule)
    for preset in args.presets:
        methods = args.methods if preset in ("cpu", "smoke") else args.paper_methods
        for method in methods:
            for channels_last in formats:
                result = run_case(preset, method, channels_last, args, device)
                print(format_row(result, device), flush=True)

    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s, "
          f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
