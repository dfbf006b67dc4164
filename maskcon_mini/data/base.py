"""The dataset class shared by every source: images with one coarse and one fine label each."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .errors import HierarchyError, ImageReadError

# The extensions torchvision.datasets.ImageFolder accepts (torchvision 0.29).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_image_files(folder: Path) -> list[Path]:
    """Return the image files directly inside ``folder``, sorted by name.

    Files count as images by extension (IMAGE_EXTENSIONS, any case). Hidden files and
    subfolders are skipped.
    """
    files = [
        entry
        for entry in folder.iterdir()
        if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".") and entry.is_file()
    ]
    return sorted(files, key=lambda entry: entry.name)


def read_rgb_image(path: str | Path) -> Image.Image:
    """Open an image file and convert it to RGB.

    Greyscale and palette images are expanded to three channels. The alpha channel of
    RGBA images is dropped, not composited.

    Raises:
        ImageReadError: Pillow cannot open or decode the file. The message names the path.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"cannot read image {path}: {error}. Replace the file with a valid image "
            "or delete it from the class folder."
        ) from error


def fine_to_coarse_from_labels(
    fine_labels: Sequence[int] | np.ndarray,
    coarse_labels: Sequence[int] | np.ndarray,
    fine_classes: Sequence[str],
    coarse_classes: Sequence[str],
) -> list[int]:
    """Derive the fine-to-coarse table from per-image label pairs.

    Args:
        fine_labels: Fine label of each image.
        coarse_labels: Coarse label of each image, in the same order.
        fine_classes: Names of all fine classes. The table has one entry per name.
        coarse_classes: Names of all coarse classes, used to check ranges and in messages.

    Returns:
        ``table[fine] = coarse``. Fine classes without any image map to -1.

    Raises:
        ValueError: The two label arrays differ in length, or a label is out of range.
        HierarchyError: One fine class occurs with two different coarse labels.
    """
    fine = np.asarray(fine_labels, dtype=np.int64)
    coarse = np.asarray(coarse_labels, dtype=np.int64)
    if fine.shape != coarse.shape:
        raise ValueError(f"got {fine.shape[0]} fine labels but {coarse.shape[0]} coarse labels, expected one of each per image")
    _check_label_range(fine, len(fine_classes), "fine")
    _check_label_range(coarse, len(coarse_classes), "coarse")

    table = [-1] * len(fine_classes)
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0) if fine.size else np.empty((0, 2), np.int64)
    for fine_label, coarse_label in pairs.tolist():
        if table[fine_label] != -1:
            raise HierarchyError(
                f"fine class {fine_classes[fine_label]!r} appears under two coarse classes, "
                f"{coarse_classes[table[fine_label]]!r} and {coarse_classes[coarse_label]!r}, "
                "but each fine class must belong to exactly one coarse class"
            )
        table[fine_label] = coarse_label
    return table


def _check_label_range(labels: np.ndarray, num_classes: int, level: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise ValueError(f"{level} label {bad} is out of range: expected 0 to {num_classes - 1}")


def balanced_subset_indices(fine_targets: torch.Tensor | np.ndarray, subset: int | float, seed: int = 0) -> np.ndarray:
    """Choose a class-balanced random subset of sample indices.

    Args:
        fine_targets: Fine label of every sample.
        subset: An int n keeps at most n images of each fine class, and classes with
            fewer images keep all of them. A float f in (0, 1] keeps round(f * count) images of
            each fine class, and at least one.
        seed: Seed of the NumPy generator that draws the images. The same seed and labels
            give the same indices.

    Returns:
        The chosen indices, sorted ascending, as int64.

    Raises:
        ValueError: ``subset`` is not a positive int or a float in (0, 1].
    """
    validate_subset(subset)
    targets = np.asarray(fine_targets, dtype=np.int64)
    generator = np.random.default_rng(seed)

    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if isinstance(subset, int):
            count = min(subset, members.size)
        else:
            count = max(1, round(subset * members.size))
        chosen.append(generator.choice(members, size=count, replace=False))

    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def validate_subset(subset: object) -> None:
    """Raise ValueError unless ``subset`` is None, an int >= 1 or a float in (0, 1]."""
    if subset is None:
        return
    if isinstance(subset, bool) or not isinstance(subset, (int, float)):
        raise ValueError(
            f"invalid subset {subset!r}: expected an int >= 1 (images per fine class) "
            "or a float in (0, 1] (fraction of each fine class)"
        )
    if isinstance(subset, int) and subset < 1:
        raise ValueError(f"invalid subset {subset}: an int subset is the number of images per fine class and must be >= 1")
    if isinstance(subset, float) and not 0.0 < subset <= 1.0:
        raise ValueError(f"invalid subset {subset}: a float subset is the fraction of each fine class and must be in (0, 1]")


def decode_images(paths: Sequence[Path], size: int | None = None) -> torch.Tensor:
    """Decode image files into one uint8 tensor of shape [N, H, W, 3].

    Args:
        paths: Image files, decoded in this order and converted to RGB.
        size: When given, every image is scaled and centre-cropped to ``size`` x ``size``
            (Pillow's ImageOps.fit, bicubic). When None, all images must share one size.

    Raises:
        ValueError: ``size`` is None and two images differ in size. The message names both files.
        ImageReadError: A file cannot be decoded.
    """
    if not paths:
        side = size or 0
        return torch.empty((0, side, side, 3), dtype=torch.uint8)

    first = _decode_one(paths[0], size)
    pixels = np.empty((len(paths), *first.shape), dtype=np.uint8)
    pixels[0] = first
    for i in range(1, len(paths)):
        array = _decode_one(paths[i], size)
        if array.shape != first.shape:
            raise ValueError(
                f"in-memory decoding needs images of one size, but {paths[0]} is "
                f"{first.shape[1]}x{first.shape[0]} and {paths[i]} is {array.shape[1]}x{array.shape[0]}. "
                "Pass in_memory_size=N to resize every image to N x N, or use in_memory=False."
            )
        pixels[i] = array
    return torch.from_numpy(pixels)


def _decode_one(path: Path, size: int | None) -> np.ndarray:
    image = read_rgb_image(path)
    if size is not None and image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


class HierarchicalDataset(Dataset):
    """Images with one coarse and one fine label each, read from files or from a uint8 tensor.

    ``dataset[i]`` returns ``(image, coarse_label, fine_label)``, where ``image`` is
    ``transform(PIL RGB image)``, or the PIL image itself when ``transform`` is None.

    Attributes:
        name: Dataset name, one of DATASET_NAMES.
        split: "train" or "test".
        coarse_classes: Coarse class names, indexed by coarse label.
        fine_classes: Fine class names, indexed by fine label.
        fine_to_coarse: Coarse label of each fine label, or -1 for a fine class that has
            no image in the source.
        coarse_targets: Coarse label of each sample, LongTensor [N].
        fine_targets: Fine label of each sample, LongTensor [N].
        indices: Position of each sample in the full split before any subset, LongTensor [N].
        paths: Image file of each sample, or None for data read from an archive.
        pixels: uint8 tensor [N, H, W, 3] when the images are held in memory, else None.
            When both are set, images are served from ``pixels``.
        transform: Callable applied to each PIL image, or None.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        coarse_classes: Sequence[str],
        fine_classes: Sequence[str],
        fine_to_coarse: Sequence[int],
        coarse_targets: Sequence[int] | np.ndarray | torch.Tensor,
        fine_targets: Sequence[int] | np.ndarray | torch.Tensor,
        paths: Sequence[Path] | None = None,
        pixels: torch.Tensor | None = None,
        indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        transform: Callable | None = None,
    ) -> None:
        """Store the samples and check that labels, table and images agree.

        Raises:
            ValueError: Neither ``paths`` nor ``pixels`` is given, lengths differ, or
                ``pixels`` is not uint8 [N, H, W, 3].
            HierarchyError: A sample's coarse label differs from ``fine_to_coarse`` of its fine label.
        """
        self.name = name
        self.split = split
        self.coarse_classes = list(coarse_classes)
        self.fine_classes = list(fine_classes)
        self.fine_to_coarse = [int(c) for c in fine_to_coarse]
        self.coarse_targets = torch.as_tensor(np.asarray(coarse_targets, dtype=np.int64))
        self.fine_targets = torch.as_tensor(np.asarray(fine_targets, dtype=np.int64))
        self.paths = None if paths is None else [Path(p) for p in paths]
        self.pixels = pixels
        count = len(self.fine_targets)
        self.indices = torch.arange(count) if indices is None else torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.transform = transform

        self._check_storage(count)
        self._check_hierarchy()

    def _check_storage(self, count: int) -> None:
        if self.paths is None and self.pixels is None:
            raise ValueError("pass paths (images on disk), pixels (images in memory) or both")
        if len(self.fine_to_coarse) != len(self.fine_classes):
            raise ValueError(f"fine_to_coarse has {len(self.fine_to_coarse)} entries but there are {len(self.fine_classes)} fine classes")

        lengths = {"coarse_targets": len(self.coarse_targets), "indices": len(self.indices)}
        if self.paths is not None:
            lengths["paths"] = len(self.paths)
        if self.pixels is not None:
            lengths["pixels"] = len(self.pixels)
        for field, length in lengths.items():
            if length != count:
                raise ValueError(f"{field} has {length} entries but fine_targets has {count}")

        if self.pixels is not None and (self.pixels.dtype != torch.uint8 or self.pixels.ndim != 4 or self.pixels.shape[-1] != 3):
            raise ValueError(f"pixels must be a uint8 tensor [N, H, W, 3], got {self.pixels.dtype} {tuple(self.pixels.shape)}")

    def _check_hierarchy(self) -> None:
        if len(self.fine_targets) == 0:
            return
        _check_label_range(self.fine_targets.numpy(), len(self.fine_classes), "fine")
        expected = torch.tensor(self.fine_to_coarse, dtype=torch.int64)[self.fine_targets]
        mismatch = torch.nonzero(expected != self.coarse_targets).flatten()
        if len(mismatch):
            i = int(mismatch[0])
            fine = int(self.fine_targets[i])
            raise HierarchyError(
                f"sample {i} has fine class {self.fine_classes[fine]!r} and coarse label "
                f"{int(self.coarse_targets[i])}, but fine_to_coarse maps that fine class to {self.fine_to_coarse[fine]}"
            )

    @property
    def in_memory(self) -> bool:
        """Whether the images are held in memory as a uint8 tensor."""
        return self.pixels is not None

    def __len__(self) -> int:
        return len(self.fine_targets)

    def load_image(self, i: int) -> Image.Image:
        """Return sample ``i`` as a PIL RGB image, without applying ``transform``."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i].numpy())
        return read_rgb_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[object, int, int]:
        image = self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.coarse_targets[i]), int(self.fine_targets[i])

    def select(self, positions: Sequence[int] | np.ndarray | torch.Tensor) -> "HierarchicalDataset":
        """Return a new dataset with the samples at ``positions`` and the complete class lists."""
        positions = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return self._replace(
            coarse_targets=self.coarse_targets[positions],
            fine_targets=self.fine_targets[positions],
            indices=self.indices[positions],
            paths=None if self.paths is None else [self.paths[i] for i in positions.tolist()],
            pixels=None if self.pixels is None else self.pixels[positions],
        )

    def to_memory(self, size: int | None = None) -> "HierarchicalDataset":
        """Return a copy whose images are decoded once into a uint8 tensor [N, H, W, 3].

        Args:
            size: Scale and centre-crop every image to ``size`` x ``size``. When None,
                all images must share one size.

        Raises:
            ValueError: ``size`` is None and the images differ in size.
            ImageReadError: A file cannot be decoded.
        """
        if self.pixels is not None:
            if size is None or tuple(self.pixels.shape[1:3]) == (size, size):
                return self._replace()
            arrays = [np.asarray(ImageOps.fit(self.load_image(i), (size, size), method=Image.Resampling.BICUBIC)) for i in range(len(self))]
            pixels = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty((0, size, size, 3), dtype=torch.uint8)
            return self._replace(pixels=pixels)
        return self._replace(pixels=decode_images(self.paths, size))

    def _replace(self, **changes) -> "HierarchicalDataset":
        fields = dict(
            name=self.name,
            split=self.split,
            coarse_classes=self.coarse_classes,
            fine_classes=self.fine_classes,
            fine_to_coarse=self.fine_to_coarse,
            coarse_targets=self.coarse_targets,
            fine_targets=self.fine_targets,
            paths=self.paths,
            pixels=self.pixels,
            indices=self.indices,
            transform=self.transform,
        )
        fields.update(changes)
        return HierarchicalDataset(**fields)

    def __repr__(self) -> str:
        storage = "in memory" if self.in_memory else "on disk"
        return (
            f"HierarchicalDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
            f"coarse_classes={len(self.coarse_classes)}, fine_classes={len(self.fine_classes)}, {storage})"
        )
