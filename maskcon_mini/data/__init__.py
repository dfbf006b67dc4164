"""Datasets with coarse and fine labels, their transforms, and the two-view wrapper.

Every dataset yields ``(image, coarse_label, fine_label)`` and carries the class names of
both levels. Training uses only the coarse labels, and Recall@K evaluation uses the fine ones.

- "cifar100": CIFAR-100 with its 20 superclasses as coarse labels (torchvision archive).
- "cifartoy_good" / "cifartoy_bad": 8 CIFAR-10 classes (no deer, no frog) in 2 coarse
  classes, from torchvision's archive or a ``cifar10/{train,test}/<class>/`` tree.
- "imagefolder": the user's own ``<coarse>/<fine>/<images>`` tree, or flat
  ``<fine>/<images>`` folders with a JSON or CSV fine-to-coarse mapping.

Nothing is downloaded unless ``download=True`` is passed.
"""

import os
from collections.abc import Callable

from .base import (
    IMAGE_EXTENSIONS,
    HierarchicalDataset,
    balanced_subset_indices,
    decode_images,
    fine_to_coarse_from_labels,
    read_rgb_image,
    validate_subset,
)
from .cifar import CIFAR10_CLASSES, CIFARTOY_GROUPS, cifartoy_classes, load_cifar100, load_cifartoy
from .errors import ChecksumError, EmptyClassFolderError, HierarchyError, ImageReadError, MappingFileError
from .folders import MAPPING_FILE_NAMES, load_image_folder, read_mapping_file
from .paths import DATA_ROOT_ENV, DATASET_NAMES, SPLITS, resolve_data_root, validate_dataset_name, validate_split
from .transforms import DATASET_STATS, build_transforms, dataset_stats
from .views import TwoViewDataset

__all__ = [
    "DATASET_NAMES",
    "DATASET_STATS",
    "DATA_ROOT_ENV",
    "CIFAR10_CLASSES",
    "CIFARTOY_GROUPS",
    "IMAGE_EXTENSIONS",
    "MAPPING_FILE_NAMES",
    "SPLITS",
    "ChecksumError",
    "EmptyClassFolderError",
    "HierarchicalDataset",
    "HierarchyError",
    "ImageReadError",
    "MappingFileError",
    "TwoViewDataset",
    "balanced_subset_indices",
    "build_dataset",
    "build_transforms",
    "cifartoy_classes",
    "dataset_stats",
    "decode_images",
    "fine_to_coarse_from_labels",
    "read_mapping_file",
    "read_rgb_image",
    "resolve_data_root",
]


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable | None = None,
    download: bool = False,
    subset: int | float | None = None,
    seed: int = 0,
    in_memory: bool = False,
    mapping_file: str | os.PathLike | None = None,
    *,
    in_memory_size: int | None = None,
) -> HierarchicalDataset:
    """Build one split of a dataset with coarse and fine labels.

    Args:
        name: One of DATASET_NAMES.
        root: Data root (see resolve_data_root). For "cifar100" it contains
            ``cifar-100-python/``. For CIFARtoy it contains ``cifar10/{train,test}/`` or
            ``cifar-10-batches-py/``. For "imagefolder" it is the image folder itself,
            and ``root/<split>/`` is read when ``root`` has a train/ or test/ subfolder.
        split: "train" or "test".
        transform: Callable applied to each PIL RGB image. With None, items contain the PIL image.
        download: Let torchvision download a missing or corrupt CIFAR archive. Not
            available for "imagefolder".
        subset: Class-balanced random subset: an int keeps at most that many images per
            fine class, a float in (0, 1] keeps that fraction of each fine class.
        seed: Seed of the subset draw.
        in_memory: Decode all images once into a uint8 tensor [N, H, W, 3] and serve
            PIL images made from it. CIFAR archives are always held in memory.
        mapping_file: JSON or CSV fine-to-coarse mapping for a flat "imagefolder".
        in_memory_size: With ``in_memory``, scale and centre-crop every image to this
            square size. It is required when the images differ in size.

    Returns:
        A HierarchicalDataset.

    Raises:
        ValueError: Unknown name or split, an invalid subset, an option that does not
            apply to the dataset, or images of different sizes with ``in_memory`` and no
            ``in_memory_size``.
        FileNotFoundError: The data are not under ``root``. The message gives the
            expected layout and the fixes.
        ChecksumError: A CIFAR archive file fails its MD5 check.
        EmptyClassFolderError, HierarchyError, MappingFileError, ImageReadError: The
            image folder or mapping file is invalid. Each message names the file or class.
    """
    validate_dataset_name(name)
    validate_split(split)
    validate_subset(subset)
    _check_options(name, download, mapping_file, in_memory, in_memory_size)
    data_root = resolve_data_root(root)

    if name == "cifar100":
        dataset = load_cifar100(data_root, split, download)
    elif name.startswith("cifartoy_"):
        dataset = load_cifartoy(data_root, split, name.removeprefix("cifartoy_"), download)
    else:
        dataset = load_image_folder(data_root, split, mapping_file)

    if subset is not None:
        dataset = dataset.select(balanced_subset_indices(dataset.fine_targets, subset, seed))
    if in_memory:
        dataset = dataset.to_memory(size=in_memory_size)
    dataset.transform = transform
    return dataset


def _check_options(
    name: str,
    download: bool,
    mapping_file: str | os.PathLike | None,
    in_memory: bool,
    in_memory_size: int | None,
) -> None:
    if name == "imagefolder" and download:
        raise ValueError("download=True is not available for 'imagefolder'. Point root at your own image folder.")
    if name != "imagefolder" and mapping_file is not None:
        raise ValueError(f"mapping_file applies only to 'imagefolder', not to {name!r}. Remove the argument.")
    if in_memory_size is not None:
        if not in_memory:
            raise ValueError(f"in_memory_size={in_memory_size!r} needs in_memory=True")
        if isinstance(in_memory_size, bool) or not isinstance(in_memory_size, int) or in_memory_size < 1:
            raise ValueError(f"invalid in_memory_size {in_memory_size!r}: expected an int >= 1 (pixels)")

