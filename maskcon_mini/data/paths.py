"""Data root lookup, name and split validation, and the error for missing data."""

import os
from pathlib import Path

DATASET_NAMES = ("cifar100", "cifartoy_good", "cifartoy_bad", "imagefolder")
SPLITS = ("train", "test")
DATA_ROOT_ENV = "MASKCON_DATA_ROOT"
DEFAULT_DATA_ROOT = "data"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the folder that contains the datasets.

    Args:
        root: Explicit folder. When None, the environment variable MASKCON_DATA_ROOT is
            used, and when that is unset or empty, ``./data`` relative to the working
            directory.

    Returns:
        The folder as a Path with ``~`` expanded. It is not checked for existence here.
    """
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def validate_dataset_name(name: str) -> str:
    """Return ``name`` if it is one of DATASET_NAMES.

    Raises:
        ValueError: The name is unknown. The message lists the allowed names.
    """
    if name not in DATASET_NAMES:
        allowed = ", ".join(repr(n) for n in DATASET_NAMES)
        raise ValueError(f"unknown dataset name {name!r}: expected one of {allowed}")
    return name


def validate_split(split: str) -> str:
    """Return ``split`` if it is "train" or "test".

    Raises:
        ValueError: The split is unknown. The message lists the allowed splits.
    """
    if split not in SPLITS:
        allowed = ", ".join(repr(s) for s in SPLITS)
        raise ValueError(f"unknown split {split!r}: expected one of {allowed}")
    return split


def missing_data_error(dataset: str, path: Path, layout: str, downloadable: bool = True) -> FileNotFoundError:
    """Build the FileNotFoundError for a dataset whose files are not on disk.

    Args:
        dataset: Human-readable dataset name used in the message.
        path: The file or folder that was expected and is missing.
        layout: The expected folder layout, one entry per line.
        downloadable: Whether ``download=True`` can fetch the data. When False, the
            message offers only the data-root fix.

    Returns:
        The error, for the caller to raise.
    """
    lines = [
        f"{dataset} not found: {path} does not exist.",
        "Expected layout:",
        *(f"    {entry}" for entry in layout.splitlines()),
    ]
    root_fix = (
        "point data_root (the `root` argument, --data-root on the command line, or the "
        f"{DATA_ROOT_ENV} environment variable) at a folder with this layout"
    )
    if downloadable:
        lines.append(
            "Fix: pass download=True (--download true on the command line) in a runtime with "
            f"internet access (for example Colab), or {root_fix}."
        )
    else:
        lines.append(f"Fix: this dataset cannot be downloaded, so {root_fix}.")
    return FileNotFoundError("\n".join(lines))
