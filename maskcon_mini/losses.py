"""Contrastive logits, the soft cross-entropy and the registry of the five methods.

Every method scores the same logits ``[q.k, q.z_1, ..., q.z_K] / T0`` (positive key in column
0, then the queue) and differs in its target row (see ``maskcon_mini.targets``), except CoIns,
which adds a cross-entropy of a coarse classifier head to the SelfCon loss.

Gradients reach only the queries (and the CoIns classifier head). Keys and queue keys are
detached here, and targets are built without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .targets import (
    maskcon_targets,
    selfcon_targets,
    supcon_targets,
    validate_temperature,
    validate_weight,
)

__all__ = [
    "METHODS",
    "LossBatch",
    "LossOutput",
    "LossSettings",
    "compute_loss",
    "contrastive_logits",
    "soft_cross_entropy",
]

# Logits of masked-out queue entries (unfilled slots, a sample's own stale key). A large finite
# value instead of -inf, so that 0 * log_softmax never evaluates 0 * -inf = NaN.
MASKED_LOGIT = -1e4


def contrastive_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    queue_keys: torch.Tensor,
    temperature: float,
    *,
    queue_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compute the MoCo logits ``[q.k, q.z_1, ..., q.z_K] / T0`` in float32.

    Args:
        queries: L2-normalised queries [B, d] (gradients flow through these).
        keys: L2-normalised positive keys [B, d] (detached).
        queue_keys: L2-normalised queue keys [K, d] (detached).
        temperature: T0 in (0, inf).
        queue_mask: optional bool mask [K] or [B, K]; False entries get a logit of -1e4, so
            they act as neither positives nor negatives.

    Returns:
        float32 logits [B, 1 + K] with the positive in column 0.

    Raises:
        ValueError: for a temperature outside (0, inf) or mismatched shapes.

    Example:
        >>> q = k = torch.tensor([[1.0, 0.0]])
        >>> contrastive_logits(q, k, torch.tensor([[0.0, 1.0]]), temperature=0.1)
        tensor([[10.,  0.]])
    """
    temperature = validate_temperature(temperature, "contrastive temperature")
    if temperature == float("inf"):
        raise ValueError("contrastive temperature must be finite, got inf; the default is 0.1.")
    if queries.dim() != 2 or queries.shape != keys.shape or queue_keys.dim() != 2 \
            or queue_keys.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries and keys must both be [B, d] and queue_keys [K, d], got shapes "
            f"{tuple(queries.shape)}, {tuple(keys.shape)} and {tuple(queue_keys.shape)}."
        )

    queries = queries.float()
    positive = (queries * keys.detach().float()).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = queries @ queue_keys.detach().float().T  # [B, K]
    if queue_mask is not None:
        negatives = negatives.masked_fill(~queue_mask.to(negatives.device), MASKED_LOGIT)
    return torch.cat([positive, negatives], dim=1) / temperature  # [B, 1+K]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the batch mean of ``-sum_j targets_j * log_softmax(logits)_j``, in float32.

    The computation leaves autocast and runs in float32, so fp16/bf16 logits give the same loss
    as float32 logits up to their input rounding. Entries with zero target contribute exactly 0,
    even where a logit is very negative.

    Args:
        logits: [B, C] logits of any floating dtype.
        targets: [B, C] non-negative rows that sum to 1.

    Returns:
        float32 scalar.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> soft_cross_entropy(torch.zeros(1, 4), torch.tensor([[1.0, 0, 0, 0]]))
        tensor(1.3863)
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and targets must both be [B, C], got shapes {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}."
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = F.log_softmax(logits.float(), dim=1)  # [B, C]
        targets = targets.float()
        per_entry = torch.where(targets > 0, targets * log_probs, torch.zeros_like(log_probs))
        return -per_entry.sum(dim=1).mean()


@dataclass(frozen=True)
class LossSettings:
    """Hyper-parameters of the loss.

    Attributes:
        method: one of ``METHODS``.
        contrastive_temperature: T0 of the logits (official default 0.1).
        target_temperature: T of the MaskCon targets (official default 0.05).
        weight: w mixing the method's target with SelfCon (MaskCon, Grafit, CoIns).
    """

    method: str = "maskcon"
    contrastive_temperature: float = 0.1
    target_temperature: float = 0.05
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"method must be one of {sorted(METHODS)}, got {self.method!r}."
            )
        validate_temperature(self.contrastive_temperature, "contrastive_temperature")
        if self.contrastive_temperature == float("inf"):
            raise ValueError("contrastive_temperature must be finite, got inf; the default is 0.1.")
        validate_temperature(self.target_temperature, "target_temperature")
        validate_weight(self.weight, "weight")


@dataclass
class LossBatch:
    """Everything a method's loss reads for one batch.

    Attributes:
        queries: L2-normalised query projections [B, d] (with gradients).
        keys: L2-normalised key projections [B, d] from the momentum encoder.
        queue_keys: queue keys [K, d].
        labels: coarse labels of the batch [B].
        queue_labels: coarse labels of the queue entries [K].
        queue_mask: bool mask [K] or [B, K] of usable queue entries, or None for all.
        class_logits: coarse classifier logits [B, C] (CoIns only).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    queue_keys: torch.Tensor
    labels: torch.Tensor
    queue_labels: torch.Tensor
    queue_mask: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None


@dataclass
class LossOutput:
    """A method's loss with the tensors behind it.

    Attributes:
        loss: float32 scalar to minimise.
        logits: contrastive logits [B, 1 + K].
        targets: the target rows [B, 1 + K] that the contrastive term used.
        extra: other scalar terms (for CoIns, the classifier cross-entropy).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def _logits(batch: LossBatch, settings: LossSettings) -> torch.Tensor:
    return contrastive_logits(
        batch.queries,
        batch.keys,
        batch.queue_keys,
        settings.contrastive_temperature,
        queue_mask=batch.queue_mask,
    )


def _selfcon_rows(batch: LossBatch) -> torch.Tensor:
    return selfcon_targets(
        batch.queries.shape[0], batch.queue_keys.shape[0], device=batch.queries.device
    )


def _supcon_rows(batch: LossBatch) -> torch.Tensor:
    return supcon_targets(batch.labels, batch.queue_labels, queue_mask=batch.queue_mask)


def selfcon_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """MoCo / SelfCon: the positive key against the queue, labels unused."""
    logits = _logits(batch, settings)
    targets = _selfcon_rows(batch)
    return LossOutput(soft_cross_entropy(logits, targets), logits, targets)


def supcon_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """SupCon over the queue: the positive key and all same-coarse queue entries."""
    logits = _logits(batch, settings)
    targets = _supcon_rows(batch)
    return LossOutput(soft_cross_entropy(logits, targets), logits, targets)


def grafit_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """Grafit: ``w * SupCon + (1 - w) * SelfCon`` on the same logits.

    The soft cross-entropy is linear in the target, so this equals one cross-entropy against
    ``w * supcon + (1 - w) * selfcon``, which is the target returned.
    """
    logits = _logits(batch, settings)
    supcon_part = soft_cross_entropy(logits, _supcon_rows(batch))
    selfcon_part = soft_cross_entropy(logits, _selfcon_rows(batch))
    loss = settings.weight * supcon_part + (1.0 - settings.weight) * selfcon_part
    targets = settings.weight * _supcon_rows(batch) + (1.0 - settings.weight) * _selfcon_rows(batch)
    return LossOutput(loss, logits, targets)


def coins_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """CoIns: ``w * CE(coarse classifier) + (1 - w) * SelfCon``.

    The coarse term is a cross-entropy of a linear head on the query's backbone features,
    not a target over [positive key, queue]. So no MaskCon setting reproduces CoIns.

    Raises:
        ValueError: if ``batch.class_logits`` is missing.
    """
    if batch.class_logits is None:
        raise ValueError(
            "method 'coins' needs class_logits from a coarse classifier head; build the model "
            "with num_coarse_classes set."
        )
    logits = _logits(batch, settings)
    targets = _selfcon_rows(batch)
    selfcon_part = soft_cross_entropy(logits, targets)
    with torch.autocast(device_type=batch.class_logits.device.type, enabled=False):
        classifier_part = F.cross_entropy(batch.class_logits.float(), batch.labels)
    loss = settings.weight * classifier_part + (1.0 - settings.weight) * selfcon_part
    return LossOutput(loss, logits, targets, {"classifier_loss": classifier_part.detach()})


def maskcon_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """MaskCon: soft targets from key-to-queue similarity within the coarse class."""
    logits = _logits(batch, settings)
    targets = maskcon_targets(
        batch.keys,
        batch.queue_keys,
        batch.labels,
        batch.queue_labels,
        settings.target_temperature,
        settings.weight,
        queue_mask=batch.queue_mask,
    )
    return LossOutput(soft_cross_entropy(logits, targets), logits, targets)


METHODS: dict[str, Callable[[LossBatch, LossSettings], LossOutput]] = {
    "selfcon": selfcon_loss,
    "supcon": supcon_loss,
    "grafit": grafit_loss,
    "coins": coins_loss,
    "maskcon": maskcon_loss,
}


def compute_loss(batch: LossBatch, settings: LossSettings) -> LossOutput:
    """Compute the loss of ``settings.method`` on ``batch``.

    Example:
        >>> q = k = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> batch = LossBatch(q, k, torch.nn.functional.normalize(torch.randn(16, 8), dim=1),
        ...                   torch.tensor([0, 1, 0, 1]), torch.randint(0, 2, (16,)))
        >>> compute_loss(batch, LossSettings(method="supcon")).loss.shape
        torch.Size([])
    """
    return METHODS[settings.method](batch, settings)
