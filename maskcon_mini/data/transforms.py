"""Per-dataset normalisation and the weak, strong and test image transforms."""

from collections.abc import Callable, Sequence

from torchvision import transforms as T

from .paths import validate_dataset_name

# The CIFAR values are those of get_augment() in the official MaskCon code
# (github.com/MrChenFeng/MaskCon_CVPR2023, utils/utils.py). NOTE: the CIFAR-10 std there,
# (0.2023, 0.1994, 0.2010), is a widely copied figure below the per-pixel std of the
# training images, which is about (0.247, 0.243, 0.261). It is kept for comparability.
CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DATASET_STATS = {
    "cifar100": CIFAR100_STATS,
    "cifartoy_good": CIFAR10_STATS,
    "cifartoy_bad": CIFAR10_STATS,
    "imagefolder": IMAGENET_STATS,
}

# Scale range of RandomResizedCrop in both training views, as in the official code.
CROP_SCALE = (0.2, 1.0)


def dataset_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return the per-channel (mean, std) used to normalise a dataset, on the 0-1 scale.

    Image folders get the ImageNet statistics. Pass ``mean`` and ``std`` to
    build_transforms to use others.

    Raises:
        ValueError: The name is not one of DATASET_NAMES.
    """
    return DATASET_STATS[validate_dataset_name(name)]


def build_transforms(
    name: str,
    size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Callable]:
    """Build the weak, strong and test transforms, which map a PIL RGB image to a tensor.

    - "weak": RandomResizedCrop(size, scale=(0.2, 1)) and a horizontal flip.
    - "strong": the weak view plus torchvision's AutoAugment with the CIFAR-10 policy,
      applied to the PIL image before conversion to a tensor.
    - "test": resize of the shorter side to ``size`` and a centre crop to ``size`` x ``size``.
      For square images this equals the official code's Resize((size, size)). Other
      images keep their aspect ratio instead of being stretched.

    All three end with ToTensor and Normalize(mean, std).

    Args:
        name: Dataset name, which selects the default statistics (see dataset_stats).
        size: Output height and width in pixels.
        mean: Per-channel mean on the 0-1 scale, three values. Defaults to the dataset's.
        std: Per-channel std on the 0-1 scale, three positive values. Defaults to the dataset's.

    Returns:
        A dict with keys "weak", "strong" and "test".

    Raises:
        ValueError: Unknown name, a size below 1, or a mean or std that is not three
            numbers (std must be positive).
    """
    default_mean, default_std = dataset_stats(name)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"invalid size {size!r}: expected an int >= 1 (pixels)")
    mean = _check_channel_values("mean", default_mean if mean is None else mean)
    std = _check_channel_values("std", default_std if std is None else std)
    if min(std) <= 0:
        raise ValueError(f"invalid std {std}: every value must be > 0")

    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    crop_and_flip = [T.RandomResizedCrop(size, scale=CROP_SCALE), T.RandomHorizontalFlip()]
    auto_augment = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)
    return {
        "weak": T.Compose(crop_and_flip + to_tensor),
        "strong": T.Compose(crop_and_flip + [auto_augment] + to_tensor),
        "test": T.Compose([T.Resize(size), T.CenterCrop(size)] + to_tensor),
    }


def _check_channel_values(label: str, values: Sequence[float]) -> tuple[float, float, float]:
    try:
        result = tuple(float(value) for value in values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid {label} {values!r}: expected three numbers, one per RGB channel") from error
    if len(result) != 3:
        raise ValueError(f"invalid {label} {values!r}: expected three numbers, one per RGB channel")
    return result
