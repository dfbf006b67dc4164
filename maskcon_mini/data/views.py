"""Two augmented views of each image, for MoCo-style contrastive training."""

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from .transforms import build_transforms


class TwoViewDataset(Dataset):
    """Wrap a dataset so that each item gives a query view and a key view of one image.

    ``dataset[i]`` returns ``(query, key, coarse_label, fine_label, i)``. The image is
    decoded once and both transforms are applied to that PIL image. The label attributes
    of the base dataset are available on the wrapper.

    Args:
        base: A dataset built with ``transform=None`` whose items are
            ``(PIL image, coarse_label, fine_label)``.
        query_transform: Transform of the query view. Defaults to the "strong" transform
            of ``base.name`` (build_transforms).
        key_transform: Transform of the key view. Defaults to the "weak" transform of ``base.name``.
        size: Image size of the default transforms, in pixels.

    Raises:
        ValueError: ``base`` already has a transform, or a default transform is needed and
            ``base`` has no ``name`` attribute.
    """

    def __init__(
        self,
        base: Dataset,
        query_transform: Callable | None = None,
        key_transform: Callable | None = None,
        *,
        size: int = 32,
    ) -> None:
        if getattr(base, "transform", None) is not None:
            raise ValueError(
                f"the base dataset already has transform={base.transform!r}. Build it with "
                "transform=None so that TwoViewDataset applies the query and key transforms."
            )
        if query_transform is None or key_transform is None:
            name = getattr(base, "name", None)
            if name is None:
                raise ValueError("pass query_transform and key_transform, because the base dataset has no `name` to choose defaults from")
            defaults = build_transforms(name, size=size)
            query_transform = defaults["strong"] if query_transform is None else query_transform
            key_transform = defaults["weak"] if key_transform is None else key_transform

        self.base = base
        self.query_transform = query_transform
        self.key_transform = key_transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[object, object, int, int, int]:
        image, coarse, fine = self.base[i]
        return self.query_transform(image), self.key_transform(image), coarse, fine, i

    @property
    def coarse_classes(self) -> list[str]:
        """Coarse class names of the base dataset."""
        return self.base.coarse_classes

    @property
    def fine_classes(self) -> list[str]:
        """Fine class names of the base dataset."""
        return self.base.fine_classes

    @property
    def fine_to_coarse(self) -> list[int]:
        """Coarse label of each fine label in the base dataset."""
        return self.base.fine_to_coarse

    @property
    def coarse_targets(self) -> torch.Tensor:
        """Coarse label of each sample, LongTensor [N]."""
        return self.base.coarse_targets

    @property
    def fine_targets(self) -> torch.Tensor:
        """Fine label of each sample, LongTensor [N]."""
        return self.base.fine_targets
