"""Command-line options shared by ``python -m maskcon_mini.train`` and ``maskcon_mini.compare``.

Every ``TrainConfig`` field becomes an option (``batch_size`` -> ``--batch-size``). The preset
applies first, then each option that is given overrides one field.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, TrainConfig, field_names, make_config
from .runio import RESULTS_FILE
from .train import train

__all__ = ["build_parser", "config_from_args", "parse_value", "train_main"]


def parse_value(text: str) -> Any:
    """Convert an option value to None, a bool, inf, an int, a float, or else keep the string."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("inf", "+inf"):
        return math.inf
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


FIELD_HELP = {
    "data_root": "folder with the data (default: $MASKCON_DATA_ROOT, else ./data)",
    "mapping_file": "JSON or CSV fine-to-coarse mapping of a flat imagefolder (default: "
                    "fine_to_coarse.json or .csv in the data root)",
    "queue_size": "K, number of queue entries (>= batch_size)",
    "momentum": "key encoder EMA momentum m in [0, 1)",
    "contrastive_temperature": "T0 of the logits, in (0, inf)",
    "target_temperature": "T of the MaskCon targets, in (0, inf]; 'inf' gives uniform weights",
    "weight": "w in [0, 1] mixing the method's target with SelfCon",
    "lr": "peak SGD learning rate (> 0)",
    "epochs": "number of epochs (>= 1)",
    "warmup_epochs": "linear warm-up epochs (0..epochs)",
    "batch_size": "images per step (>= 1)",
    "train_subset": "images per fine class (int) or fraction (float in (0, 1]); none = all",
    "test_subset": "images per fine class (int) or fraction (float in (0, 1]); none = all",
    "eval_every": "score Recall@K every N epochs (0 = only after the last epoch)",
    "recall_ks": "comma-separated K values of Recall@K",
    "device": "auto, cpu, cuda or mps",
    "amp": "autocast on CUDA: auto, none, bf16 or fp16",
    "seed": "random seed (>= 0)",
    "dataset": "cifar100, cifartoy_good, cifartoy_bad or imagefolder",
    "download": "true lets torchvision download the dataset (needs a network)",
    "in_memory": "true decodes every image once into memory before training",
    "image_size": "side of the square crops, in pixels (>= 1)",
    "query_view": "augmentation of the query view: weak, strong or test",
    "key_view": "augmentation of the key view: weak, strong or test",
    "num_workers": "DataLoader worker processes (>= 0; 0 loads in the main process)",
    "train_labels": "coarse (the MaskCon setting) or fine (the fine-label oracle)",
    "backbone": "resnet18, resnet50 or convnet",
    "width": "first-stage channels of the convnet backbone (>= 1)",
    "projection_dim": "output dimension d of the projector (>= 1)",
    "hidden_dim": "hidden width of the projector (>= 1)",
    "pretrained": "none, imagenet (from torch's hub cache) or a state-dict file; ResNets only",
    "exclude_own_keys": "true masks a sample's own stale key in the queue",
    "method": "maskcon, supcon, selfcon, grafit or coins",
    "sgd_momentum": "SGD momentum in [0, 1)",
    "weight_decay": "SGD weight decay (>= 0)",
    "eval_features": "features scored by Recall@K: backbone or projector",
    "eval_chunk_size": "queries per similarity block in evaluation (>= 1)",
    "channels_last": "true uses the channels_last (NHWC) memory format on CUDA and CPU",
    "deterministic": "true makes torch's algorithms deterministic (reproducible CPU runs)",
}

BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def build_parser(run_options: bool = True) -> argparse.ArgumentParser:
    """Build the parser: the preset, the output folder, and one option per config field.

    Args:
        run_options: add ``--resume`` and ``--stop-after-epochs``, which act on one run folder.
    """
    parser = argparse.ArgumentParser(
        prog="python -m maskcon_mini.train",
        description="Train with coarse labels (MaskCon, SupCon, SelfCon, Grafit or CoIns) and "
                    "score Recall@K on fine labels. Preset values apply first; every other "
                    "option overrides one config field.",
    )
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS),
                        help="starting point for all fields (default: cpu)")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    if run_options:
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
        parser.add_argument("--stop-after-epochs", type=int, default=None,
                            help="stop after this many epochs (>= 1), leaving a checkpoint "
                                 "to resume")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    defaults = TrainConfig()
    for name in field_names():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            metavar=type(default).__name__.upper() if default is not None else "VALUE",
                            help=FIELD_HELP.get(name, f"config field {name}"))
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the config from parsed arguments: preset first, then each given field."""
    overrides = {}
    for name in field_names():
        text = getattr(args, name)
        if text is None:
            continue
        if name == "recall_ks":
            overrides[name] = tuple(int(k) for k in text.split(","))
        elif name in ("data_root", "mapping_file", "pretrained"):
            overrides[name] = None if text.lower() == "none" else text
        elif isinstance(getattr(TrainConfig(), name), bool):
            if text.lower() not in BOOLEAN_WORDS:
                raise ValueError(f"--{name.replace('_', '-')} must be true or false, got {text!r}.")
            overrides[name] = BOOLEAN_WORDS[text.lower()]
        else:
            overrides[name] = parse_value(text)
    return make_config(args.preset, **overrides)


def train_main(argv: list[str] | None = None) -> int:
    """Run ``python -m maskcon_mini.train``; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        parser.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}.")
    try:
        results = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                        stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not (Path(args.out) / RESULTS_FILE).exists():
        print(f"{config.method}: stopped after epoch {results.get('epoch')}; resume with "
              f"--resume --out {args.out}")
        return 0
    recall = ", ".join(f"R@{k} {v:.4f}" for k, v in results["recall"].items())
    print(f"{config.method}: {recall}  ->  {Path(args.out) / RESULTS_FILE}")
    return 0
