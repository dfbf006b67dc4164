"""The momentum-contrast model shared by all five methods.

A query encoder (backbone + projector) is trained by gradient descent. A key encoder with the
same architecture follows it by an exponential moving average and never receives gradients.
A queue stores the K most recent keys with their coarse labels and sample indices.

About "shuffle BN": MoCo shuffles the key batch across GPUs before the key encoder, so that
BatchNorm statistics of a query and its key come from different sub-batches. On one device,
permuting a batch and un-permuting the output cannot change anything, because batch statistics
are invariant to the order of the samples. The official MaskCon code does exactly that on one
GPU, so this model omits it; ``tests/test_model.py`` checks that such a permutation changes
no output.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .key_queue import KeyQueue
from .losses import LossBatch, LossSettings, compute_loss

__all__ = ["Encoder", "MomentumContrast", "StepOutput", "fine_mass_share", "fine_mass_parts"]


class Encoder(nn.Module):
    """Backbone followed by the projector MLP ``feature_dim -> hidden_dim -> projection_dim``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, projection_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (backbone features [B, feature_dim], projections [B, projection_dim])."""
        features = self.backbone(images)
        return features, self.projector(features)


class StepOutput(dict):
    """A dict with ``loss`` (tensor with gradients), ``keys``, ``targets`` and scalar diagnostics."""


class MomentumContrast(nn.Module):
    """Query encoder, momentum key encoder, queue and an optional coarse classifier head.

    Args:
        backbone: ``"resnet18"``, ``"resnet50"`` or ``"convnet"``.
        projection_dim: output dimension of the projector (official code: 256).
        hidden_dim: hidden width of the projector (official code: 512).
        queue_size: K, the number of queue entries (official code: 8192).
        momentum: m in [0, 1); key parameters become ``m * key + (1 - m) * query``.
        num_coarse_classes: size of the coarse classifier head (needed by CoIns), or None.
        small_images: CIFAR stem for the ResNets.
        width: first-stage width of ``"convnet"``.
        pretrained: None, ``"imagenet"`` or a path; see ``backbones.load_pretrained_weights``.
        exclude_own_keys: mask queue entries that hold a key of the same sample (stale keys
            from an earlier epoch), so they act as neither positives nor negatives.

    Example:
        >>> model = MomentumContrast("convnet", width=8, queue_size=64, projection_dim=16)
        >>> images = torch.randn(4, 3, 32, 32)
        >>> labels, indices = torch.tensor([0, 1, 0, 1]), torch.arange(4)
        >>> out = model(images, images, labels, indices, LossSettings("maskcon"))
        >>> out["loss"].backward()
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        projection_dim: int = 256,
        hidden_dim: int = 512,
        queue_size: int = 8192,
        momentum: float = 0.99,
        num_coarse_classes: int | None = None,
        small_images: bool = True,
        width: int = 32,
        pretrained: str | Path | None = None,
        exclude_own_keys: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}; the default is 0.99.")
        self.momentum = float(momentum)
        self.exclude_own_keys = bool(exclude_own_keys)

        network, feature_dim = build_backbone(
            backbone, small_images=small_images, width=width, pretrained=pretrained
        )
        self.feature_dim = feature_dim
        self.encoder_q = Encoder(network, feature_dim, hidden_dim, projection_dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for parameter in self.encoder_k.parameters():
            parameter.requires_grad_(False)

        self.queue = KeyQueue(queue_size, projection_dim)
        self.classifier = (
            nn.Linear(feature_dim, num_coarse_classes) if num_coarse_classes else None
        )

    # Features for evaluation (query encoder).

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the query encoder's backbone features [B, feature_dim]."""
        return self.encoder_q.backbone(images)

    def projector_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the query encoder's projections [B, projection_dim]."""
        return self.encoder_q(images)[1]

    # Key encoder.

    @torch.no_grad()
    def momentum_update(self) -> None:
        """Move every key-encoder parameter towards the query encoder: k = m*k + (1-m)*q.

        BatchNorm running statistics are buffers and get the same update.
        """
        query_state = self.encoder_q.state_dict()
        for name, key_tensor in self.encoder_k.state_dict().items():
            query_tensor = query_state[name]
            if key_tensor.dtype.is_floating_point:
                key_tensor.mul_(self.momentum).add_(query_tensor.detach(), alpha=1 - self.momentum)
            else:
                key_tensor.copy_(query_tensor)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised keys [B, projection_dim] from the key encoder (no gradients)."""
        return F.normalize(self.encoder_k(images)[1].float(), dim=1)

    @torch.no_grad()
    def fill_queue(self, batches, device: torch.device | str | None = None) -> int:
        """Fill the queue with real keys from a pass of the key encoder, as the official code does.

        Args:
            batches: an iterable of ``(key_images, coarse_labels, indices)``; iteration stops
                once every slot is filled.
            device: where to move the images, default the model's device.

        Returns:
            The number of keys written.

        Raises:
            ValueError: if the batches run out before the queue is full.
        """
        device = device or next(self.parameters()).device
        written = 0
        for images, labels, indices in batches:
            remaining = self.queue.size - written
            keys = self.encode_keys(images[:remaining].to(device))
            self.queue.enqueue(keys, labels[:remaining].to(device), indices[:remaining].to(device))
            written += keys.shape[0]
            if written >= self.queue.size:
                return written
        raise ValueError(
            f"the data ran out after {written} keys, before the queue of K={self.queue.size} "
            f"was full; use a smaller queue_size or a larger dataset."
        )

    # One training step.

    def forward(
        self,
        query_images: torch.Tensor,
        key_images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        settings: LossSettings,
        *,
        update_key_encoder: bool = True,
        enqueue: bool = True,
    ) -> StepOutput:
        """Run one step: momentum update, keys, queries, targets, loss, then enqueue the keys.

        Args:
            query_images: query views [B, 3, H, W] (strong augmentation by default).
            key_images: key views [B, 3, H, W] (weak augmentation by default).
            labels: coarse labels [B].
            indices: dataset indices of the samples [B].
            settings: the method and its hyper-parameters.
            update_key_encoder: apply the momentum update before computing keys.
            enqueue: write this batch's keys into the queue after the loss.

        Returns:
            ``StepOutput`` with ``loss`` (scalar with gradients), ``keys`` [B, d],
            ``targets`` [B, 1+K] (detached) and diagnostics as detached scalar tensors on
            the step's device: ``positive_logit`` (mean logit of the positive key),
            ``target_entropy`` (mean entropy of the target rows, in nats), ``positive_mass``
            (mean target weight on the positive key) and, for CoIns, ``classifier_loss``.
            ``float(output[name])`` reads one; on a GPU that waits for the step to finish.
        """
        if update_key_encoder:
            self.momentum_update()
        keys = self.encode_keys(key_images)  # [B, d]

        features, projections = self.encoder_q(query_images)  # [B, feat], [B, d]
        queries = F.normalize(projections.float(), dim=1)  # [B, d]
        class_logits = self.classifier(features) if self.classifier is not None else None

        queue_keys, queue_labels, queue_indices, valid = self.queue.snapshot()
        queue_mask = valid  # [K]
        if self.exclude_own_keys:
            queue_mask = valid[None, :] & (queue_indices[None, :] != indices[:, None])  # [B, K]

        batch = LossBatch(queries, keys, queue_keys, labels, queue_labels, queue_mask, class_logits)
        result = compute_loss(batch, settings)

        if enqueue:
            self.queue.enqueue(keys, labels, indices)
        return self._step_output(result, keys, queue_indices, queue_mask)

    @staticmethod
    def _step_output(result, keys, queue_indices, queue_mask) -> StepOutput:
        targets = result.targets.detach()  # [B, 1+K]
        entropy = -(torch.where(targets > 0, targets * targets.log(), torch.zeros_like(targets)))
        output = StepOutput(
            loss=result.loss,
            keys=keys,
            targets=targets,
            queue_indices=queue_indices,
            queue_mask=queue_mask,
            positive_logit=result.logits[:, 0].detach().float().mean(),
            target_entropy=entropy.sum(dim=1).mean(),
            positive_mass=targets[:, 0].mean(),
        )
        for name, value in result.extra.items():
            output[name] = value.detach()
        return output


def fine_mass_share(
    targets: torch.Tensor,
    fine_labels: torch.Tensor,
    queue_fine_labels: torch.Tensor,
) -> float:
    """Return the mean share of each row's queue mass that falls on the sample's own fine class.

    Fine labels are used only for this diagnostic, never for training. Rows with no queue mass
    (SelfCon, or no same-coarse entry) are left out; NaN is returned when every row is.

    Args:
        targets: target rows [B, 1 + K] (column 0 is the positive key).
        fine_labels: fine labels of the batch [B].
        queue_fine_labels: fine labels of the queue entries [K] (-1 for unknown).

    Returns:
        The mean over rows of ``sum_{j: fine_j = fine_i} y_ij / sum_j y_ij`` (queue columns only).

    Example:
        >>> targets = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
        >>> round(fine_mass_share(targets, torch.tensor([7]), torch.tensor([7, 8, 7])), 6)
        0.6
    """
    share_sum, rows = fine_mass_parts(targets, fine_labels, queue_fine_labels)
    if int(rows) == 0:
        return math.nan
    return float(share_sum) / int(rows)


def fine_mass_parts(
    targets: torch.Tensor,
    fine_labels: torch.Tensor,
    queue_fine_labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the parts of ``fine_mass_share`` as tensors on the targets' device.

    The trainer adds these up over an epoch without waiting for the device at every step.

    Returns:
        The sum of the per-row shares over rows with queue mass (float32 scalar), and the
        number of those rows (int64 scalar).
    """
    queue_mass = targets[:, 1:].float()  # [B, K]
    total = queue_mass.sum(dim=1)  # [B]
    same_fine = fine_labels[:, None] == queue_fine_labels[None, :]  # [B, K]
    on_fine = (queue_mass * same_fine).sum(dim=1)  # [B]
    rows = total > 0  # [B]
    shares = torch.where(rows, on_fine / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)  # [B]
    return shares.sum(), rows.sum()
