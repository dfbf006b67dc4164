"""CIFAR-100 with its 20 superclasses, and CIFARtoy (8 CIFAR-10 classes in 2 coarse groups).

Both read the Python-pickle archives that torchvision downloads and extracts. CIFARtoy
can also read an image-folder tree ``<root>/cifar10/{train,test}/<class>/``. Downloads go
through torchvision's downloader and happen only when ``download=True``.
"""

import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets import utils as tv_utils

from .base import IMAGE_EXTENSIONS, HierarchicalDataset, fine_to_coarse_from_labels, list_image_files
from .errors import ChecksumError, EmptyClassFolderError
from .paths import missing_data_error

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TREE_FOLDER = "cifar10"

# CIFARtoy drops deer and frog and groups the other 8 CIFAR-10 classes into two coarse
# classes, as in the CIFAR-10 experiment of MaskCon (Feng and Patras, CVPR 2023) and its
# official code (datasets/cifartoy.py). The "good" grouping follows semantics (vehicles
# vs animals), while the "bad" one mixes them. Fine labels number the classes in the order listed here, so fine
# labels 0-3 belong to coarse class 0 and 4-7 to coarse class 1.
CIFARTOY_GROUPS = {
    "good": {
        "vehicle": ("airplane", "automobile", "ship", "truck"),
        "animal": ("bird", "cat", "dog", "horse"),
    },
    "bad": {
        "airplane+automobile+dog+cat": ("airplane", "automobile", "dog", "cat"),
        "ship+truck+bird+horse": ("ship", "truck", "bird", "horse"),
    },
}


def cifartoy_classes(variant: str) -> tuple[list[str], list[str], list[int]]:
    """Return the coarse class names, fine class names and fine-to-coarse table of CIFARtoy.

    Args:
        variant: "good" or "bad".

    Raises:
        ValueError: The variant is unknown.
    """
    if variant not in CIFARTOY_GROUPS:
        raise ValueError(f"unknown CIFARtoy variant {variant!r}: expected 'good' or 'bad'")
    groups = CIFARTOY_GROUPS[variant]
    coarse_classes = list(groups)
    fine_classes = [fine for members in groups.values() for fine in members]
    table = [coarse for coarse, members in enumerate(groups.values()) for _ in members]
    return coarse_classes, fine_classes, table


def load_cifar100(root: Path, split: str, download: bool = False) -> HierarchicalDataset:
    """Load a CIFAR-100 split with the coarse labels stored in the archive.

    The coarse label of every image is the archive's own ``coarse_labels`` entry, and the
    fine-to-coarse table is derived from those pairs rather than typed in.

    Args:
        root: Folder that contains ``cifar-100-python/`` (torchvision's layout).
        split: "train" or "test".
        download: Fetch and extract the archive with torchvision when it is missing or corrupt.

    Raises:
        FileNotFoundError: An archive file is missing and ``download`` is False.
        ChecksumError: An archive file fails its MD5 check.
        HierarchyError: A fine class appears with two coarse labels.
    """
    folder = _prepare_archive(CIFAR100, "CIFAR-100", root, split, download)
    (split_file, _), = _split_files(CIFAR100, split)
    entry = _load_pickle(folder / split_file, ("data", "fine_labels", "coarse_labels"))
    meta = _load_pickle(folder / CIFAR100.meta["filename"], ("fine_label_names", "coarse_label_names"))

    fine_classes = list(meta["fine_label_names"])
    coarse_classes = list(meta["coarse_label_names"])
    fine = np.asarray(entry["fine_labels"], dtype=np.int64)
    coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    # NOTE: a fine class with no image in this split maps to -1. That happens only for a
    # partial archive, because both official splits contain all 100 fine classes.
    table = fine_to_coarse_from_labels(fine, coarse, fine_classes, coarse_classes)

    return HierarchicalDataset(
        name="cifar100",
        split=split,
        coarse_classes=coarse_classes,
        fine_classes=fine_classes,
        fine_to_coarse=table,
        coarse_targets=coarse,
        fine_targets=fine,
        pixels=_rows_to_pixels(entry["data"]),
    )


def load_cifartoy(root: Path, split: str, variant: str, download: bool = False) -> HierarchicalDataset:
    """Load a CIFARtoy split from an image-folder tree or from torchvision's CIFAR-10 archive.

    The tree ``<root>/cifar10/<split>/<class>/`` is read when it exists. Otherwise the
    archive ``<root>/cifar-10-batches-py/`` is read, and downloaded first when
    ``download`` is True and it is missing or corrupt.

    Args:
        root: Data root that contains ``cifar10/`` or ``cifar-10-batches-py/``.
        split: "train" or "test".
        variant: "good" or "bad" coarse grouping (see CIFARTOY_GROUPS).
        download: Allow fetching CIFAR-10 with torchvision.

    Raises:
        FileNotFoundError: Neither source exists, or a class folder of the tree is missing.
        EmptyClassFolderError: A class folder of the tree contains no images.
        ChecksumError: An archive file fails its MD5 check.
    """
    tree = root / CIFAR10_TREE_FOLDER / split
    if tree.is_dir():
        return _cifartoy_from_tree(tree, split, variant)
    if not download and not (root / CIFAR10.base_folder).is_dir():
        missing = tree if root.is_dir() else root
        raise missing_data_error("CIFAR-10 (for CIFARtoy)", missing, _cifar10_layout(root))
    return _cifartoy_from_archive(root, split, variant, download)


def _cifartoy_from_tree(tree: Path, split: str, variant: str) -> HierarchicalDataset:
    coarse_classes, fine_classes, table = cifartoy_classes(variant)

    samples = []
    for fine_label, class_name in enumerate(fine_classes):
        class_folder = tree / class_name
        if not class_folder.is_dir():
            raise missing_data_error("CIFAR-10 class folder", class_folder, _cifar10_layout(tree.parents[1]))
        files = list_image_files(class_folder)
        if not files:
            raise EmptyClassFolderError(
                f"class folder {class_folder} contains no image files "
                f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)}). "
                f"Put the {class_name!r} images there or rebuild the tree."
            )
        samples.extend((path.name, fine_label, path) for path in files)

    # Sorting by file name across classes restores the archive order when files are
    # named by their CIFAR-10 index, so both sources give the same sample order.
    samples.sort()
    fine = np.array([fine_label for _, fine_label, _ in samples], dtype=np.int64)
    return HierarchicalDataset(
        name=f"cifartoy_{variant}",
        split=split,
        coarse_classes=coarse_classes,
        fine_classes=fine_classes,
        fine_to_coarse=table,
        coarse_targets=np.asarray(table, dtype=np.int64)[fine],
        fine_targets=fine,
        paths=[path for _, _, path in samples],
    )


def _cifartoy_from_archive(root: Path, split: str, variant: str, download: bool) -> HierarchicalDataset:
    coarse_classes, fine_classes, table = cifartoy_classes(variant)
    folder = _prepare_archive(CIFAR10, "CIFAR-10 (for CIFARtoy)", root, split, download)

    rows, labels = [], []
    for file_name, _ in _split_files(CIFAR10, split):
        entry = _load_pickle(folder / file_name, ("data", "labels"))
        rows.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry["labels"])
    meta_path = folder / CIFAR10.meta["filename"]
    label_names = list(_load_pickle(meta_path, ("label_names",))["label_names"])

    missing = [name for name in fine_classes if name not in label_names]
    if missing:
        raise ValueError(f"{meta_path} lists classes {label_names}, which lack the CIFARtoy classes {missing}")
    toy_label = np.full(len(label_names), -1, dtype=np.int64)
    for fine_label, name in enumerate(fine_classes):
        toy_label[label_names.index(name)] = fine_label

    fine = toy_label[np.asarray(labels, dtype=np.int64)]
    keep = fine >= 0
    fine = fine[keep]
    return HierarchicalDataset(
        name=f"cifartoy_{variant}",
        split=split,
        coarse_classes=coarse_classes,
        fine_classes=fine_classes,
        fine_to_coarse=table,
        coarse_targets=np.asarray(table, dtype=np.int64)[fine],
        fine_targets=fine,
        pixels=_rows_to_pixels(np.concatenate(rows))[torch.from_numpy(keep)],
    )


def _cifar10_layout(root: Path) -> str:
    archive = root / CIFAR10.base_folder
    return (
        f"{root / CIFAR10_TREE_FOLDER}/{{train,test}}/<class name>/<images>   (image-folder tree), or\n"
        f"{archive}/{{data_batch_1..5,test_batch,batches.meta}}   (torchvision's CIFAR-10 archive)"
    )


def _cifar100_layout(root: Path) -> str:
    return f"{root / CIFAR100.base_folder}/{{train,test,meta}}   (torchvision's CIFAR-100 archive)"


def _split_files(archive_class: type, split: str) -> list[tuple[str, str]]:
    files = archive_class.train_list if split == "train" else archive_class.test_list
    return [(name, md5) for name, md5 in files]


def _prepare_archive(archive_class: type, title: str, root: Path, split: str, download: bool) -> Path:
    """Return the archive folder after checking the files of ``split``, downloading them first if allowed."""
    folder = root / archive_class.base_folder
    files = _split_files(archive_class, split) + [(archive_class.meta["filename"], archive_class.meta["md5"])]
    layout = _cifar100_layout(root) if archive_class is CIFAR100 else _cifar10_layout(root)

    problems = _archive_problems(title, folder, files, layout)
    if problems and download:
        tv_utils.download_and_extract_archive(
            archive_class.url, str(root), filename=archive_class.filename, md5=archive_class.tgz_md5
        )
        problems = _archive_problems(title, folder, files, layout)
    if problems:
        raise problems[0]
    return folder


def _archive_problems(title: str, folder: Path, files: Iterable[tuple[str, str]], layout: str) -> list[Exception]:
    problems = []
    for name, md5 in files:
        path = folder / name
        if not path.is_file():
            problems.append(missing_data_error(title, path, layout))
        elif not tv_utils.check_integrity(str(path), md5):
            problems.append(
                ChecksumError(
                    f"{title} file {path} failed its MD5 check (expected {md5}), so it is corrupt, "
                    f"truncated or from another release. Fix: delete {folder} and pass download=True "
                    "in a runtime with internet access, or copy in the original files."
                )
            )
    return problems


def _load_pickle(path: Path, required_keys: tuple[str, ...]) -> dict:
    # The CIFAR archives were pickled by Python 2, so strings are decoded as latin1, as torchvision does.
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    missing = [key for key in required_keys if key not in entry]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing} (found {sorted(entry)}), so it is not a CIFAR pickle.")
    return entry


def _rows_to_pixels(rows: np.ndarray) -> torch.Tensor:
    """Convert CIFAR rows (R plane, G plane, B plane of 32x32 each) to uint8 [N, 32, 32, 3]."""
    array = np.asarray(rows, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return torch.from_numpy(np.ascontiguousarray(array))
