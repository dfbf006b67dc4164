"""Target distributions over [positive key, queue] for every method.

Every method in this package trains the query encoder with a soft cross-entropy against a target
row of length ``1 + K``: column 0 is the sample's own positive key (the other view of the same
image) and columns ``1..K`` are the queue entries. The methods differ only in how they fill that
row:

- ``selfcon_targets``: all mass on column 0 (MoCo / SelfCon).
- ``supcon_targets``: uniform over column 0 and every queue entry with the same label
  (SupCon over the queue).
- ``maskcon_targets``: column 0 keeps weight 1, same-coarse queue entries get weights from
  key-to-queue similarity, and a weight ``w`` mixes the result with the SelfCon one-hot row.

All functions return float32 tensors (also for float16/bfloat16 inputs) without gradients.

A queue mask can be passed to each function. It is a bool tensor ``[K]`` (one mask for the
whole batch) or ``[B, K]`` (one per sample); masked-out entries never receive target mass.
The queue uses it for unfilled slots, and the model uses the per-sample form to hide a sample's
own stale key.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = [
    "selfcon_targets",
    "supcon_targets",
    "maskcon_targets",
    "validate_temperature",
    "validate_weight",
]


def validate_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``temperature`` as a float after checking that it lies in (0, inf].

    Raises:
        ValueError: if the value is not a real number, is NaN, or is <= 0.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ValueError(
            f"{name} must be a real number in (0, inf], got {temperature!r} "
            f"of type {type(temperature).__name__}; pass a float such as 0.05."
        )
    value = float(temperature)
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"{name} must be in (0, inf], got {value}; use a positive value "
            f"(the official code uses 0.05 for targets and 0.1 for logits) or math.inf."
        )
    return value


def validate_weight(weight: float, name: str = "weight") -> float:
    """Return ``weight`` as a float after checking that it lies in [0, 1].

    Raises:
        ValueError: if the value is not a real number, is NaN, or lies outside [0, 1].
    """
    if isinstance(weight, bool) or not isinstance(weight, Real):
        raise ValueError(
            f"{name} must be a real number in [0, 1], got {weight!r} "
            f"of type {type(weight).__name__}."
        )
    value = float(weight)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1], got {value}; 0 gives the self-supervised target, "
            f"1 the pure soft target."
        )
    return value


def _check_labels(labels: torch.Tensor, queue_labels: torch.Tensor) -> None:
    if labels.dim() != 1 or queue_labels.dim() != 1:
        raise ValueError(
            f"labels must be 1-D [B] and queue_labels 1-D [K], got shapes "
            f"{tuple(labels.shape)} and {tuple(queue_labels.shape)}."
        )
    for name, tensor in (("labels", labels), ("queue_labels", queue_labels)):
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise ValueError(
                f"{name} must be an integer tensor, got dtype {tensor.dtype}; "
                f"convert with .long()."
            )


def _check_queue_mask(queue_mask: torch.Tensor | None, batch_size: int, queue_size: int) -> None:
    if queue_mask is None:
        return
    allowed = ((queue_size,), (batch_size, queue_size))
    if tuple(queue_mask.shape) not in allowed:
        raise ValueError(
            f"queue_mask must have shape [K]={allowed[0]} or [B, K]={allowed[1]}, "
            f"got {tuple(queue_mask.shape)}."
        )
    if queue_mask.dtype != torch.bool:
        raise ValueError(f"queue_mask must be a bool tensor, got dtype {queue_mask.dtype}.")


def _same_label_mask(
    labels: torch.Tensor, queue_labels: torch.Tensor, queue_mask: torch.Tensor | None
) -> torch.Tensor:
    """Return the bool matrix [B, K] of usable queue entries that share the sample's label."""
    same = labels[:, None] == queue_labels[None, :]  # [B, K]
    if queue_mask is not None:
        same &= queue_mask.to(same.device)
    return same


def _with_positive_column(queue_weights: torch.Tensor) -> torch.Tensor:
    """Prepend weight 1 for the positive key and normalise each row to sum to 1.

    Args:
        queue_weights: non-negative float32 weights [B, K] for the queue entries.

    Returns:
        float32 [B, 1 + K] with the positive key in column 0.
    """
    ones = torch.ones_like(queue_weights[:, :1])  # [B, 1]
    unnormalised = torch.cat([ones, queue_weights], dim=1)  # [B, 1+K]
    return unnormalised / unnormalised.sum(dim=1, keepdim=True)


def selfcon_targets(
    batch_size: int,
    queue_size: int,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the self-supervised (MoCo / SelfCon) targets: all mass on the positive key.

    Args:
        batch_size: number of samples B (>= 1).
        queue_size: number of queue entries K (>= 0).
        device: device of the result.

    Returns:
        float32 tensor [B, 1 + K] that is 1 in column 0 and 0 elsewhere.

    Raises:
        ValueError: if ``batch_size`` < 1 or ``queue_size`` < 0.

    Example:
        >>> selfcon_targets(2, 3)
        tensor([[1., 0., 0., 0.],
                [1., 0., 0., 0.]])
    """
    if int(batch_size) < 1 or int(queue_size) < 0:
        raise ValueError(
            f"batch_size must be >= 1 and queue_size >= 0, got {batch_size} and {queue_size}."
        )
    targets = torch.zeros(int(batch_size), 1 + int(queue_size), device=device)  # [B, 1+K]
    targets[:, 0] = 1.0
    return targets


@torch.no_grad()
def supcon_targets(
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    *,
    queue_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build SupCon targets over the queue: uniform over the positive key and same-label entries.

    Row i is ``[1, m_1, ..., m_K] / (1 + sum_j m_j)`` with ``m_j = [queue_labels[j] == labels[i]]``.
    With coarse labels this is the SupCon baseline; with fine labels it is the fine-label oracle.

    Args:
        labels: integer labels of the batch [B].
        queue_labels: integer labels of the queue entries [K].
        queue_mask: optional bool mask [K] or [B, K]; False entries get no mass.

    Returns:
        float32 tensor [B, 1 + K]; each row sums to 1.

    Raises:
        ValueError: if a shape or dtype is wrong (the message shows the shapes).

    Example:
        >>> supcon_targets(torch.tensor([0]), torch.tensor([0, 1, 0]))
        tensor([[0.3333, 0.3333, 0.0000, 0.3333]])
    """
    _check_labels(labels, queue_labels)
    _check_queue_mask(queue_mask, labels.shape[0], queue_labels.shape[0])

    same = _same_label_mask(labels, queue_labels.to(labels.device), queue_mask)  # [B, K]
    return _with_positive_column(same.float())


@torch.no_grad()
def maskcon_targets(
    keys: torch.Tensor,
    queue_keys: torch.Tensor,
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    temperature: float,
    weight: float = 1.0,
    *,
    queue_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build MaskCon soft targets from key-to-queue similarity inside each coarse class.

    For sample i with key ``k`` (momentum encoder, key view) and queue keys ``z_j``:
    ``s_j = k . z_j``; for queue entries with the same coarse label,
    ``r_j = exp((s_j - max_l s_l) / T)`` where the maximum runs over the same-coarse entries,
    and ``r_j = 0`` for all others. The soft row is ``y = [1, r_1, ..., r_K] / (1 + sum_j r_j)``
    and the result is ``weight * y + (1 - weight) * e_0``.

    Subtracting the maximum before ``exp`` rescales the weights so that the nearest same-coarse
    entry gets exactly 1. It also keeps every value in (0, 1], so no temperature can overflow,
    and the rows stay well defined when every same-coarse similarity is very negative.
    A row with no same-coarse queue entry keeps all its mass on column 0.
    ``temperature=math.inf`` gives uniform same-coarse weights (SupCon when ``weight=1``).

    Args:
        keys: L2-normalised keys [B, d].
        queue_keys: L2-normalised queue keys [K, d].
        labels: integer coarse labels of the batch [B].
        queue_labels: integer coarse labels of the queue entries [K].
        temperature: T in (0, inf]; small values concentrate mass on the nearest entries.
        weight: w in [0, 1]; 0 gives SelfCon targets, 1 the pure soft targets.
        queue_mask: optional bool mask [K] or [B, K]; False entries get no mass.

    Returns:
        float32 tensor [B, 1 + K]; each row is non-negative and sums to 1.
        float16 and bfloat16 inputs are converted to float32 first.

    Raises:
        ValueError: for a temperature outside (0, inf], a weight outside [0, 1], or
            mismatched shapes (the message shows both shapes).

    Example:
        >>> k = torch.tensor([[1.0, 0.0]])
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> maskcon_targets(k, z, torch.tensor([0]), torch.tensor([0, 0]), temperature=1.0)
        tensor([[0.4223, 0.4223, 0.1554]])
    """
    temperature = validate_temperature(temperature)
    weight = validate_weight(weight)
    _check_embeddings(keys, queue_keys)
    _check_labels(labels, queue_labels)
    if keys.shape[0] != labels.shape[0] or queue_keys.shape[0] != queue_labels.shape[0]:
        raise ValueError(
            f"keys {tuple(keys.shape)} and labels {tuple(labels.shape)} must agree on B, and "
            f"queue_keys {tuple(queue_keys.shape)} and queue_labels "
            f"{tuple(queue_labels.shape)} must agree on K."
        )
    _check_queue_mask(queue_mask, keys.shape[0], queue_keys.shape[0])

    # Every step below writes into `targets` in place, so that the only [B, K] tensors alive at
    # once are the result and the bool mask. This keeps peak memory and time low at large K.
    targets = torch.empty(keys.shape[0], 1 + queue_keys.shape[0], device=keys.device)  # [B, 1+K]
    queue_weights = targets[:, 1:]  # [B, K] view
    same = _same_label_mask(labels, queue_labels.to(labels.device), queue_mask)  # [B, K]

    if temperature == math.inf:
        queue_weights.copy_(same)
    else:
        # Autocast leaves calls with out= alone, so the similarities stay float32 inside it too.
        torch.matmul(keys.float(), queue_keys.float().T, out=queue_weights)
        # Entries of another coarse class become -inf, so exp() turns them into exactly 0.
        queue_weights.masked_fill_(same.logical_not_(), -math.inf)

        # The maximum over same-coarse entries; rows without any get 0 so no inf - inf appears.
        row_max = queue_weights.amax(dim=1, keepdim=True)  # [B, 1]
        row_max.masked_fill_(~torch.isfinite(row_max), 0.0)

        # (s - max) <= 0 on same-coarse entries, so exp() lies in (0, 1] and the nearest gets 1.
        queue_weights.sub_(row_max).div_(temperature).exp_()

    targets[:, 0] = 1.0
    targets.div_(targets.sum(dim=1, keepdim=True))
    if weight != 1.0:
        # weight * soft + (1 - weight) * one-hot, where the one-hot row is 1 in column 0 only.
        targets.mul_(weight)
        targets[:, 0] += 1.0 - weight
    return targets


def _check_embeddings(keys: torch.Tensor, queue_keys: torch.Tensor) -> None:
    if keys.dim() != 2 or queue_keys.dim() != 2 or keys.shape[1] != queue_keys.shape[1]:
        raise ValueError(
            f"keys must be [B, d] and queue_keys [K, d] with the same d, got shapes "
            f"{tuple(keys.shape)} and {tuple(queue_keys.shape)}."
        )
