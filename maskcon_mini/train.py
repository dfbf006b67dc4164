"""Train an encoder with coarse labels by any of the five methods and score it on fine labels.

Command line (every ``TrainConfig`` field can be overridden; see ``--help``)::

    python -m maskcon_mini.train --preset cpu --method maskcon --dataset cifartoy_good \\
        --data-root DIR --out runs/maskcon

A run folder contains ``config.json``, ``metrics.jsonl`` (one line per epoch), ``results.json``
(final metrics) and ``checkpoint.pt`` (model, optimiser, schedule, queue and RNG states, saved
after every epoch). ``--resume`` continues an interrupted run exactly where its last checkpoint
ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import TwoViewDataset, build_dataset, build_transforms
from .evaluate import evaluate_embeddings, extract_features
from .key_queue import warn_if_stale_keys
from .losses import LossSettings
from .model import MomentumContrast, fine_mass_parts
from .runio import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    environment_info,
    load_checkpoint,
    read_json,
    read_jsonl,
    save_checkpoint,
    write_json,
    write_jsonl,
)
from .targets import supcon_targets

__all__ = ["train", "evaluate_model", "build_model", "resolve_device", "learning_rate_at"]

logger = logging.getLogger("maskcon_mini.train")


# Set-up.

def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``name``; ``"auto"`` picks cuda, then mps, then cpu.

    Raises:
        ValueError: if the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if not available.get(name, False):
        raise ValueError(
            f"device {name!r} is not available on this machine; use device='auto' or 'cpu'."
        )
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally make torch's algorithms deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def uses_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """Return whether model and images use the channels_last (NHWC) memory format.

    It applies on CUDA and on the CPU, where it cut the convnet step of the ``cpu`` preset to
    about 0.7 of its time (bench/bench_step.py). MPS keeps the default format.
    """
    return config.channels_last and device.type in ("cuda", "cpu")


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for this run, or None for float32 (always on CPU and MPS)."""
    if device.type != "cuda" or config.amp == "none":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Return the learning rate of ``step``: linear warm-up, then cosine decay to 0.

    Step ``s < warmup_steps`` gets ``base_lr * (s + 1) / warmup_steps``. Later steps get
    ``0.5 * base_lr * (1 + cos(pi * progress))`` with progress from 0 to 1 over the rest.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class RunData:
    """The datasets of a run and the label tables the trainer reads by sample index."""

    train: TwoViewDataset
    test: Any
    train_labels: torch.Tensor  # [N] labels used for training (coarse, or fine for the oracle)
    fine_labels: torch.Tensor  # [N] fine labels, for the diagnostic only
    num_coarse_classes: int


def build_data(config: TrainConfig) -> RunData:
    """Build the two-view training set and the test set of ``config``."""
    transforms = build_transforms(config.dataset, size=config.image_size)
    common = dict(root=config.data_root, download=config.download, seed=config.seed,
                  in_memory=config.in_memory)
    if config.dataset == "imagefolder":
        # Image folders may contain images of any size, so decoded images are scaled to the
        # crop size.
        common.update(mapping_file=config.mapping_file,
                      in_memory_size=config.image_size if config.in_memory else None)
    base = build_dataset(config.dataset, split="train", subset=config.train_subset, **common)
    test = build_dataset(config.dataset, split="test", subset=config.test_subset,
                         transform=transforms["test"], **common)
    train = TwoViewDataset(base, transforms[config.query_view], transforms[config.key_view])
    level = base.coarse_targets if config.train_labels == "coarse" else base.fine_targets
    classes = base.coarse_classes if config.train_labels == "coarse" else base.fine_classes
    return RunData(train, test, level.clone(), base.fine_targets.clone(), len(classes))


def build_model(config: TrainConfig, num_coarse_classes: int) -> MomentumContrast:
    """Build the model of ``config``; a coarse classifier head is added for CoIns."""
    return MomentumContrast(
        config.backbone,
        projection_dim=config.projection_dim,
        hidden_dim=config.hidden_dim,
        queue_size=config.queue_size,
        momentum=config.momentum,
        num_coarse_classes=num_coarse_classes if config.method == "coins" else None,
        small_images=config.image_size <= 64,
        width=config.width,
        pretrained=config.pretrained,
        exclude_own_keys=config.exclude_own_keys,
    )


def make_loader(dataset, config: TrainConfig, generator: torch.Generator | None,
                shuffle: bool, drop_last: bool, batch_size: int | None = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size or config.batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=config.num_workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=False,
    )


# Run folders.

def prepare_run_folder(out_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Check the run folder before any work; return True when a checkpoint will be resumed.

    Raises:
        FileExistsError: the folder contains a run and neither ``resume`` nor ``overwrite`` is set.
        ValueError: ``resume`` with a config that differs from the saved one.
    """
    has_run = (out_dir / CONFIG_FILE).exists()
    if resume and (out_dir / CHECKPOINT_FILE).exists():
        saved = read_json(out_dir / CONFIG_FILE)
        changed = {k: (saved.get(k), v) for k, v in config.to_dict().items()
                   if saved.get(k) != v and k not in ("device", "num_workers")}
        if changed:
            raise ValueError(
                f"cannot resume {out_dir}: the config differs from the saved one in {changed} "
                f"(saved, requested). Resume with the same settings, replace the run with "
                f"overwrite=True (--overwrite), or use another output folder."
            )
        return True
    if has_run and not overwrite and not resume:
        raise FileExistsError(
            f"{out_dir} already contains a run ({CONFIG_FILE} exists). Pass resume=True "
            f"(--resume) to continue it, overwrite=True (--overwrite) to replace it, or choose "
            f"another output folder."
        )
    if has_run and overwrite:
        for name in (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, CHECKPOINT_FILE):
            (out_dir / name).unlink(missing_ok=True)
    return False


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
        "python": random.getstate(),
        "numpy": [np.random.get_state()[1].tolist(), int(np.random.get_state()[2])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    keys, position = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), position, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Evaluation.

@torch.no_grad()
def evaluate_model(model: MomentumContrast, test_set, config: TrainConfig,
                   device: torch.device) -> dict[str, Any]:
    """Score ``model`` on the test set: Recall@K, MAP@R, kNN accuracy (fine) and coarse R@1."""
    loader = make_loader(test_set, config, None, shuffle=False, drop_last=False,
                         batch_size=max(256, config.batch_size))
    features, coarse, fine = extract_features(model, loader, device, which=config.eval_features)
    ks = [k for k in config.recall_ks if k <= len(features) - 1]
    # k=200 as in the kNN protocol of InstDisc; small test sets use a tenth of the gallery, since
    # with k close to N every class votes with all its members and the query's own class,
    # which has one member fewer, loses by construction.
    knn_k = min(200, max(1, (len(features) - 1) // 10))
    return evaluate_embeddings(features, fine, coarse, ks=ks, chunk_size=config.eval_chunk_size,
                               knn_k=knn_k)


# Training.

class EpochStats:
    """Running means of the per-step numbers of one epoch.

    Values may be tensors on the training device. They are summed there and read back only in
    ``means``, so recording a step does not wait for the device.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, torch.Tensor | int] = {}

    def add(self, name: str, value: torch.Tensor | float | None, count: torch.Tensor | int = 1) -> None:
        """Add ``value``, a sum over ``count`` items (one step by default). None and NaN floats are skipped."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + count

    def total(self, name: str) -> float:
        """Return the current sum of ``name`` as a float (this waits for the device)."""
        return float(self.sums.get(name, 0.0))

    def means(self) -> dict[str, float]:
        """Return the mean of every recorded name; names that never had an item are left out."""
        means = {}
        for name, total in self.sums.items():
            count = float(self.counts[name])
            if count > 0:
                means[name] = float(total) / count
        return means


def _progress(iterable, total: int, description: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


def _queue_fill_batches(loader: DataLoader):
    for _, key_images, labels, _, indices in loader:
        yield key_images, labels, indices


def _step_diagnostics(output, labels, fine, tables, stats: EpochStats) -> None:
    """Record how much target queue mass falls on the sample's own fine class (and SupCon's).

    Every tensor is on the targets' device. ``labels`` and ``fine`` [B] are the batch's training
    and fine labels. ``tables`` contains the dataset's training and fine labels [N], which are
    looked up by the queue's sample indices.
    """
    train_table, fine_table = tables
    queue_indices = output["queue_indices"]  # [K], -1 for unfilled slots
    filled = queue_indices >= 0
    lookup = queue_indices.clamp(min=0)
    queue_fine = torch.where(filled, fine_table[lookup], -1)  # [K]
    queue_labels = torch.where(filled, train_table[lookup], -1)  # [K]
    stats.add("fine_mass", *fine_mass_parts(output["targets"], fine, queue_fine))
    supcon = supcon_targets(labels, queue_labels, queue_mask=output["queue_mask"])  # [B, 1+K]
    stats.add("supcon_fine_mass", *fine_mass_parts(supcon, fine, queue_fine))


# The trainer checks the running loss for NaN or inf every this many steps and at the end of
# each epoch. Each check waits for the device, so a check at every step would stall a GPU.
LOSS_CHECK_INTERVAL = 25


def train_one_epoch(model, loader, optimizer, scaler, settings, config, data, device,
                    state, total_steps, warmup_steps, progress) -> dict[str, float]:
    """Train for one epoch and return the epoch means of loss, lr and diagnostics."""
    model.train()
    stats = EpochStats()
    dtype = autocast_dtype(config, device)
    tables = (data.train_labels.to(device), data.fine_labels.to(device))  # [N], [N]
    first_unchecked_step = state["step"] + 1
    batches = _progress(loader, len(loader), f"epoch {state['epoch'] + 1}/{config.epochs}", progress)
    for position, (query_images, key_images, _, fine, indices) in enumerate(batches, start=1):
        lr = learning_rate_at(state["step"], total_steps, warmup_steps, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr

        labels = data.train_labels[indices].to(device)  # [B]
        query_images, key_images = _to_device(query_images, key_images, device, config)
        with _autocast(device, dtype):
            output = model(query_images, key_images, labels, indices.to(device), settings)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(output["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        state["step"] += 1

        stats.add("loss", output["loss"])
        stats.add("lr", lr)
        for name in ("positive_logit", "target_entropy", "positive_mass", "classifier_loss"):
            if name in output:
                stats.add(name, output[name])
        _step_diagnostics(output, labels, fine.to(device), tables, stats)

        if position % LOSS_CHECK_INTERVAL == 0 or position == len(loader):
            running_loss = stats.total("loss")
            _check_finite_loss(running_loss, first_unchecked_step, state["step"], config)
            first_unchecked_step = state["step"] + 1
            if progress and hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{float(output['loss'].detach()):.3f}", lr=f"{lr:.4f}")
    return stats.means()


def _check_finite_loss(running_loss: float, first_step: int, last_step: int, config) -> None:
    if not math.isfinite(running_loss):
        raise FloatingPointError(
            f"the loss became {running_loss} between steps {first_step} and {last_step}; lower lr "
            f"(now {config.lr}) or use amp='none'."
        )


def _to_device(query_images, key_images, device, config):
    memory_format = torch.channels_last if uses_channels_last(config, device) else torch.contiguous_format
    return (query_images.to(device, non_blocking=True, memory_format=memory_format),
            key_images.to(device, non_blocking=True, memory_format=memory_format))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` and write its run folder; return the final results dict.

    Args:
        config: a validated ``TrainConfig``.
        out_dir: the run folder (created if missing).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (else start fresh).
        overwrite: replace an existing run in ``out_dir``.
        stop_after_epochs: stop after this many epochs of this call, leaving a checkpoint to
            resume later (for time-limited sessions such as Colab). The schedule still
            follows ``config.epochs``.
        progress: show tqdm progress bars (terminal and Jupyter).
        on_epoch_end: called with each epoch's metrics record.

    Returns:
        The ``results.json`` content, or the last epoch record when stopped early.

    Raises:
        FileExistsError: ``out_dir`` contains a run and neither resume nor overwrite is set.
        ValueError: a resume with a different config, or an unavailable device.
        FileNotFoundError: the dataset is missing (the message names both fixes).
    """
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    resuming = prepare_run_folder(out_dir, config, resume, overwrite)

    seed_everything(config.seed, config.deterministic)
    started = time.time()
    # Taken before training, so the recorded git commit is the one checked out at the start.
    environment = environment_info(device)
    data = build_data(config)
    model = build_model(config, data.num_coarse_classes).to(device)
    if uses_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type,
                                  enabled=autocast_dtype(config, device) == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    loader = make_loader(data.train, config, generator, shuffle=True, drop_last=True)
    if len(loader) == 0:
        raise ValueError(
            f"the training set has {len(data.train)} images, fewer than batch_size="
            f"{config.batch_size}; use a smaller batch or a larger train_subset."
        )
    if not config.exclude_own_keys:
        warn_if_stale_keys(config.queue_size, len(data.train), config.batch_size)
    settings = LossSettings(config.method, config.contrastive_temperature,
                            config.target_temperature, config.weight)
    total_steps = config.epochs * len(loader)
    warmup_steps = config.warmup_epochs * len(loader)

    state = {"epoch": 0, "step": 0, "elapsed": 0.0}
    records: list[dict[str, Any]] = []
    if resuming:
        checkpoint = load_checkpoint(out_dir / CHECKPOINT_FILE, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = dict(checkpoint["state"])
        restore_rng_state(checkpoint["rng"], generator)
        records = read_jsonl(out_dir / METRICS_FILE)[: state["epoch"]]
        if state["epoch"] >= config.epochs and (out_dir / RESULTS_FILE).exists():
            logger.info("%s is already finished; returning its results", out_dir)
            return read_json(out_dir / RESULTS_FILE)
        logger.info("resuming %s after epoch %d of %d", out_dir, state["epoch"], config.epochs)
    else:
        write_json(out_dir / CONFIG_FILE, config.to_dict())
        logger.info("filling the queue of K=%d with keys from the key encoder", config.queue_size)
        fill_generator = torch.Generator().manual_seed(config.seed + 1)
        model.fill_queue(_queue_fill_batches(make_loader(data.train, config, fill_generator,
                                                         shuffle=True, drop_last=False)), device)

    epochs_this_call = 0
    while state["epoch"] < config.epochs:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            logger.info("stopping after epoch %d of %d as requested; resume to continue",
                        state["epoch"], config.epochs)
            return records[-1] if records else {}
        epoch_start = time.time()
        means = train_one_epoch(model, loader, optimizer, scaler, settings, config, data, device,
                                state, total_steps, warmup_steps, progress)
        state["epoch"] += 1
        epochs_this_call += 1
        record = {"epoch": state["epoch"], "step": state["step"], **means,
                  "seconds": time.time() - epoch_start}
        if _should_score(state["epoch"], config):
            record["metrics"] = evaluate_model(model, data.test, config, device)
            record["recall"] = record["metrics"]["recall"]
        state["elapsed"] += time.time() - epoch_start
        records.append(record)
        _save_epoch(out_dir, model, optimizer, scaler, state, generator, records)
        logger.info("%s", format_record(record))
        if on_epoch_end:
            on_epoch_end(record)

    return _write_results(out_dir, config, records, state, device, started, environment)


def _should_score(epoch: int, config: TrainConfig) -> bool:
    return epoch == config.epochs or (config.eval_every > 0 and epoch % config.eval_every == 0)


def _save_epoch(out_dir, model, optimizer, scaler, state, generator, records) -> None:
    # Metrics first: a kill between the two writes leaves a checkpoint that is one epoch
    # behind the metrics, and resume truncates the metrics to the checkpoint's epoch.
    write_jsonl(out_dir / METRICS_FILE, records)
    save_checkpoint(out_dir / CHECKPOINT_FILE, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": dict(state),
        "rng": rng_state(generator),
    })


def _write_results(out_dir, config, records, state, device, started, environment) -> dict[str, Any]:
    final = records[-1]
    metrics = final["metrics"]
    results = {
        "method": config.method,
        "dataset": config.dataset,
        "train_labels": config.train_labels,
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": state["step"],
        "recall": {str(k): v for k, v in metrics["recall"].items()},
        "map_at_r": metrics["map_at_r"],
        "knn_accuracy": metrics["knn_accuracy"],
        "coarse_recall_at_1": metrics["coarse_recall_at_1"],
        "final_loss": final.get("loss"),
        "fine_mass": final.get("fine_mass"),
        "supcon_fine_mass": final.get("supcon_fine_mass"),
        "train_seconds": state["elapsed"],
        "wall_seconds_this_call": time.time() - started,
        "process_peak_rss_mib": peak_rss_mib(),
        "environment": environment,
        "autocast": _dtype_name(autocast_dtype(config, device)),
        "channels_last": uses_channels_last(config, device),
    }
    write_json(out_dir / RESULTS_FILE, results)
    return results


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "none" if dtype is None else str(dtype).removeprefix("torch.")


def peak_rss_mib() -> float | None:
    """Return this process's peak resident memory in MiB, or None where it is unknown.

    It covers the whole process so far: several runs in one process share one peak.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def format_record(record: dict[str, Any]) -> str:
    """Return one compact log line for an epoch record."""
    parts = [f"epoch {record['epoch']:>3}", f"loss {record.get('loss', float('nan')):.4f}",
             f"lr {record.get('lr', float('nan')):.4f}", f"{record['seconds']:.1f}s"]
    if "fine_mass" in record:
        parts.append(f"fine mass {record['fine_mass']:.3f} (SupCon "
                     f"{record.get('supcon_fine_mass', float('nan')):.3f})")
    if "recall" in record:
        parts.append("R@1 {:.4f}".format(record["recall"][min(record["recall"])]))
    return " | ".join(parts)


if __name__ == "__main__":
    from .cli import train_main

    sys.exit(train_main())
