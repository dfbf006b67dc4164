"""One validated configuration object for a training run, and its presets.

``TrainConfig`` contains every hyper-parameter of a run. It is validated when created, so a bad
value fails before any data is read or any file is written. ``make_config(preset, **overrides)``
starts from a preset:

- ``paper``: the official MaskCon code's CIFAR settings (ResNet-18 with the CIFAR stem,
  K=8192, m=0.99, T0=0.1, T=0.05, SGD lr 0.02, batch 128, 200 epochs), trained from scratch.
- ``colab``: a ResNet-18 budget that a free Colab GPU finishes in well under an hour.
- ``cpu``: a small convnet that trains in about 6 minutes per method on 2 idle CPU cores.
- ``smoke``: seconds, for tests and for checking an installation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

from .backbones import BACKBONES
from .losses import METHODS

__all__ = ["TrainConfig", "PRESETS", "make_config", "DATASETS", "DEVICES", "AMP_MODES"]

DATASETS = ("cifar100", "cifartoy_good", "cifartoy_bad", "imagefolder")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "none", "bf16", "fp16")
VIEWS = ("weak", "strong", "test")
EVAL_FEATURES = ("backbone", "projector")
LABEL_LEVELS = ("coarse", "fine")


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. Invalid values raise ValueError on creation.

    Data:
        dataset: one of ``DATASETS``.
        data_root: folder with the data (None: env ``MASKCON_DATA_ROOT``, else ``./data``).
        mapping_file: JSON or CSV fine-to-coarse mapping of a flat ``"imagefolder"`` (None:
            ``fine_to_coarse.json`` or ``.csv`` in the data root, else the nested layout).
        download: let torchvision download the dataset (needs a network).
        train_subset / test_subset: images per fine class (int) or fraction (float in (0, 1]),
            class-balanced and seeded; None uses the whole split.
        in_memory: decode every image once into a uint8 tensor before training.
        image_size: side of the square crops, in pixels.
        query_view / key_view: augmentation of each view, ``"weak"``, ``"strong"`` or ``"test"``.
        num_workers: DataLoader worker processes (0 loads in the main process).
        train_labels: ``"coarse"`` (the MaskCon setting) or ``"fine"`` (the oracle that
            trains on fine labels, for teaching and as an upper reference).
    Model:
        backbone: one of ``BACKBONES``; width: first-stage width of ``"convnet"``.
        projection_dim, hidden_dim: projector sizes; pretrained: None, "imagenet" or a path.
        queue_size: K; momentum: m of the key encoder in [0, 1).
        exclude_own_keys: mask a sample's own stale key in the queue.
    Loss:
        method: one of ``METHODS``; contrastive_temperature: T0 of the logits;
        target_temperature: T of the MaskCon targets; weight: w in [0, 1].
    Optimisation:
        lr: peak learning rate of SGD; sgd_momentum; weight_decay; batch_size;
        epochs; warmup_epochs: linear warm-up, then cosine decay to 0, updated per iteration.
    Evaluation:
        eval_every: score Recall@K every this many epochs (0: only after the last epoch,
            which is always scored); recall_ks; eval_features: ``"backbone"`` or ``"projector"``;
        eval_chunk_size: queries per similarity block.
    Run:
        seed; device: ``"auto"`` picks cuda, then mps, then cpu; amp: autocast dtype on CUDA
        (``"auto"`` is bf16 where supported, else fp16); channels_last: NHWC model and images
        (CUDA and CPU, not MPS);
        deterministic: ``torch.use_deterministic_algorithms`` for bitwise-reproducible CPU runs.
    """

    # Data.
    dataset: str = "cifartoy_good"
    data_root: str | None = None
    mapping_file: str | None = None
    download: bool = False
    train_subset: int | float | None = None
    test_subset: int | float | None = None
    in_memory: bool = False
    image_size: int = 32
    query_view: str = "strong"
    key_view: str = "weak"
    num_workers: int = 0
    train_labels: str = "coarse"

    # Model.
    backbone: str = "resnet18"
    width: int = 32
    projection_dim: int = 256
    hidden_dim: int = 512
    pretrained: str | None = None
    queue_size: int = 8192
    momentum: float = 0.99
    exclude_own_keys: bool = True

    # Loss.
    method: str = "maskcon"
    contrastive_temperature: float = 0.1
    target_temperature: float = 0.05
    weight: float = 0.5

    # Optimisation.
    lr: float = 0.02
    sgd_momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 200
    warmup_epochs: int = 5

    # Evaluation.
    eval_every: int = 10
    recall_ks: tuple[int, ...] = (1, 2, 5, 10, 50, 100)
    eval_features: str = "backbone"
    eval_chunk_size: int = 1024

    # Run.
    seed: int = 1228
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        self.recall_ks = tuple(self.recall_ks)
        for check in (_check_choices, _check_numbers, _check_relations):
            check(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict of every field."""
        values = asdict(self)
        values["recall_ks"] = list(self.recall_ks)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build a config from ``to_dict`` output; unknown keys raise ValueError."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; allowed: {field_names()}.")
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        """Return a validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def field_names() -> list[str]:
    """Return the names of all ``TrainConfig`` fields, in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def _check_choices(config: TrainConfig) -> None:
    choices = {
        "dataset": DATASETS,
        "backbone": BACKBONES,
        "method": tuple(sorted(METHODS)),
        "device": DEVICES,
        "amp": AMP_MODES,
        "query_view": VIEWS,
        "key_view": VIEWS,
        "eval_features": EVAL_FEATURES,
        "train_labels": LABEL_LEVELS,
    }
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            _fail(name, value, f"one of {list(allowed)}")
    if config.mapping_file is not None and config.dataset != "imagefolder":
        raise ValueError(
            f"mapping_file applies only to dataset 'imagefolder', got {config.mapping_file!r} with "
            f"dataset {config.dataset!r}. Remove the mapping file (--mapping-file) or use "
            "dataset='imagefolder' (--dataset imagefolder)."
        )
    if config.pretrained is not None and config.backbone == "convnet":
        _fail("pretrained", config.pretrained, "None for backbone 'convnet' (no weights exist)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _check_positive_ints(config: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "queue_size", "projection_dim", "hidden_dim", "width",
                 "image_size", "eval_chunk_size"):
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            _fail(name, value, "an integer >= 1")
    for name in ("warmup_epochs", "eval_every", "num_workers", "seed"):
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            _fail(name, value, "an integer >= 0")


def _check_numbers(config: TrainConfig) -> None:
    _check_positive_ints(config)

    target_t = config.target_temperature
    if not _is_real(target_t) or target_t <= 0:
        _fail("target_temperature", target_t, "in (0, inf] (the official default is 0.05)")
    contrastive_t = config.contrastive_temperature
    if not _is_real(contrastive_t) or not 0 < contrastive_t < math.inf:
        _fail("contrastive_temperature", contrastive_t, "in (0, inf) (the official default is 0.1)")
    if not _is_real(config.weight) or not 0 <= config.weight <= 1:
        _fail("weight", config.weight, "in [0, 1]")
    if not _is_real(config.momentum) or not 0 <= config.momentum < 1:
        _fail("momentum", config.momentum, "in [0, 1) (the official default is 0.99)")
    if not _is_real(config.sgd_momentum) or not 0 <= config.sgd_momentum < 1:
        _fail("sgd_momentum", config.sgd_momentum, "in [0, 1)")
    if not _is_real(config.lr) or not 0 < config.lr < math.inf:
        _fail("lr", config.lr, "a finite number > 0")
    if not _is_real(config.weight_decay) or not 0 <= config.weight_decay < math.inf:
        _fail("weight_decay", config.weight_decay, "a finite number >= 0")

    for name in ("train_subset", "test_subset"):
        value = getattr(config, name)
        if value is None or (_is_int(value) and value >= 1):
            continue
        if isinstance(value, float) and 0 < value <= 1:
            continue
        _fail(name, value, "None, an integer >= 1 (per fine class) or a float in (0, 1]")

    if not config.recall_ks or not all(_is_int(k) and k >= 1 for k in config.recall_ks):
        _fail("recall_ks", config.recall_ks, "a non-empty list of integers >= 1")


def _check_relations(config: TrainConfig) -> None:
    if config.queue_size < config.batch_size:
        raise ValueError(
            f"queue_size must be >= batch_size, got queue_size={config.queue_size} and "
            f"batch_size={config.batch_size}; enlarge the queue or shrink the batch."
        )
    if config.warmup_epochs > config.epochs:
        raise ValueError(
            f"warmup_epochs must be <= epochs, got warmup_epochs={config.warmup_epochs} and "
            f"epochs={config.epochs}."
        )


PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        backbone="resnet18", projection_dim=256, hidden_dim=512, queue_size=8192, momentum=0.99,
        contrastive_temperature=0.1, target_temperature=0.05, weight=0.5, lr=0.02,
        sgd_momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=200, warmup_epochs=5,
        query_view="strong", key_view="weak", eval_every=10, num_workers=4,
    ),
    # NOTE: the colab budget (30 epochs of ResNet-18 in well under an hour on a free Colab
    # GPU) is an estimate from the step's FLOP count and the loader's CPU throughput here. It
    # has not been timed on a GPU.
    "colab": dict(
        backbone="resnet18", projection_dim=256, hidden_dim=512, queue_size=8192, momentum=0.99,
        contrastive_temperature=0.1, target_temperature=0.05, weight=0.5, lr=0.06,
        batch_size=256, epochs=30, warmup_epochs=2, eval_every=10, num_workers=2,
        in_memory=True,
    ),
    "cpu": dict(
        backbone="convnet", width=16, projection_dim=128, hidden_dim=256, queue_size=4096,
        momentum=0.99, contrastive_temperature=0.1, target_temperature=0.1, weight=0.5,
        lr=0.06, batch_size=256, epochs=6, warmup_epochs=1, train_subset=None,
        eval_every=1, in_memory=True, num_workers=0, recall_ks=(1, 2, 5, 10, 50, 100),
        # The recorded cpu results used the contiguous format. channels_last=True makes the
        # step faster on a CPU but changes the floating-point results slightly.
        channels_last=False,
    ),
    "smoke": dict(
        backbone="convnet", width=4, projection_dim=16, hidden_dim=32, queue_size=32,
        batch_size=16, epochs=2, warmup_epochs=1, train_subset=16, test_subset=8, lr=0.05,
        eval_every=1, in_memory=True, recall_ks=(1, 2, 5), num_workers=0, eval_chunk_size=32,
        device="cpu",
    ),
}


def make_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """Return a validated ``TrainConfig`` from a preset with some fields overridden.

    Args:
        preset: one of ``PRESETS`` (``"paper"``, ``"colab"``, ``"cpu"``, ``"smoke"``).
        **overrides: any ``TrainConfig`` field.

    Raises:
        ValueError: for an unknown preset or field, or an invalid value.

    Example:
        >>> make_config("smoke", method="supcon").method
        'supcon'
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}.")
    unknown = sorted(set(overrides) - set(field_names()))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; allowed: {field_names()}.")
    return TrainConfig(**{**PRESETS[preset], **overrides})
