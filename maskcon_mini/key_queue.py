"""A first-in, first-out queue of keys with their coarse labels and sample indices."""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["KeyQueue", "warn_if_stale_keys"]


class KeyQueue(nn.Module):
    """Queue of the K most recent keys, their coarse labels and dataset sample indices.

    All state lives in buffers, so it moves with ``.to(device)`` and round-trips through
    ``state_dict``. A slot is usable only after a key was written to it: unfilled slots are
    reported by ``valid_mask`` and must act as neither positives nor negatives. Any batch size
    from 1 to K can be enqueued, and writes wrap around the end of the buffer.

    Args:
        size: number of slots K (>= 1).
        dim: key dimension d (>= 1).

    Example:
        >>> queue = KeyQueue(size=8, dim=4)
        >>> queue.enqueue(torch.randn(3, 4), torch.tensor([0, 1, 0]), torch.tensor([5, 6, 7]))
        >>> int(queue.valid_mask.sum())
        3
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if int(size) < 1 or int(dim) < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}.")
        self.size = int(size)
        self.dim = int(dim)

        # Unfilled slots hold zero keys, label -1 and index -1, and are False in `filled`.
        self.register_buffer("keys", torch.zeros(self.size, self.dim))  # [K, d]
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))  # [K]
        self.register_buffer("indices", torch.full((self.size,), -1, dtype=torch.long))  # [K]
        self.register_buffer("filled", torch.zeros(self.size, dtype=torch.bool))  # [K]
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next slot to write

    @property
    def valid_mask(self) -> torch.Tensor:
        """Bool mask [K] of slots that hold a real key."""
        return self.filled

    @property
    def is_full(self) -> bool:
        """Whether every slot contains a real key."""
        return bool(self.filled.all())

    @property
    def num_filled(self) -> int:
        """Number of slots that hold a real key."""
        return int(self.filled.sum())

    @torch.no_grad()
    def enqueue(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> None:
        """Write a batch of keys over the oldest slots.

        Args:
            keys: keys [B, d] with 1 <= B <= K (detached; stored in float32).
            labels: integer coarse labels [B].
            indices: dataset indices of the samples [B], or None to store -1.

        Raises:
            ValueError: if B > K, B = 0, or a shape does not match.
        """
        batch_size = keys.shape[0] if keys.dim() == 2 else -1
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"keys must be [B, {self.dim}], got shape {tuple(keys.shape)}."
            )
        if not 1 <= batch_size <= self.size:
            raise ValueError(
                f"batch size must be between 1 and the queue size K={self.size}, got "
                f"{batch_size}; use a queue at least as large as the batch."
            )
        if labels.shape != (batch_size,):
            raise ValueError(
                f"labels must be [B]=({batch_size},), got shape {tuple(labels.shape)}."
            )
        if indices is not None and indices.shape != (batch_size,):
            raise ValueError(
                f"indices must be [B]=({batch_size},), got shape {tuple(indices.shape)}."
            )

        start = int(self.pointer)
        slots = (torch.arange(batch_size, device=self.keys.device) + start) % self.size  # [B]
        self.keys[slots] = keys.detach().to(self.keys)
        self.labels[slots] = labels.to(self.labels)
        self.indices[slots] = -1 if indices is None else indices.to(self.indices)
        self.filled[slots] = True
        self.pointer.fill_((start + batch_size) % self.size)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return copies of (keys [K, d], labels [K], indices [K], valid mask [K]).

        The loss must read copies: the queue is updated in place after the forward pass, and
        autograd needs the queue keys as they were.
        """
        return self.keys.clone(), self.labels.clone(), self.indices.clone(), self.filled.clone()


def warn_if_stale_keys(queue_size: int, dataset_size: int, batch_size: int) -> float:
    """Warn when a sample's own key from the previous epoch is likely still in the queue.

    With the data reshuffled every epoch, the expected share of samples that find their own
    stale key in the queue is about K / N. When K + B > N it is every sample. A stale key of the
    same image gets a high MaskCon weight, which leaks an easy positive into the target.
    ``MomentumContrast(exclude_own_keys=True)`` masks those entries out.

    Args:
        queue_size: K.
        dataset_size: number of training samples N.
        batch_size: B.

    Returns:
        The estimated share min(1, K / N), or 1.0 when K + B > N.
    """
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}.")
    if queue_size + batch_size > dataset_size:
        share = 1.0
    else:
        share = min(1.0, queue_size / dataset_size)
    if share >= 0.5:
        warnings.warn(
            f"queue size K={queue_size} is close to the dataset size N={dataset_size} "
            f"(batch {batch_size}): about {share:.0%} of samples will find their own key from "
            f"the previous epoch in the queue. Use a smaller queue, or keep exclude_own_keys=True.",
            UserWarning,
            stacklevel=2,
        )
    return share
