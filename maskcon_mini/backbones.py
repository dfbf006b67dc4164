"""Backbones: torchvision ResNets with the CIFAR stem, and a small convnet for CPUs.

Each builder returns ``(module, feature_dim)``, where the module maps images [B, 3, H, W] to
backbone features [B, feature_dim] (after global average pooling, before any projector).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

__all__ = ["BACKBONES", "build_backbone", "SmallConvNet", "load_pretrained_weights"]

# torchvision's file names for the ImageNet weights (IMAGENET1K_V1) in torch's hub cache.
IMAGENET_WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}


class SmallConvNet(nn.Module):
    """A VGG-style convnet of 7 conv layers, fast enough to train on a 2-core CPU.

    Three stages of two 3x3 conv-BN-ReLU layers each, with a 2x2 max-pool after each stage,
    then one more conv layer and global average pooling. Channels grow as
    width, 2*width, 4*width, 8*width.

    Args:
        width: channels of the first stage (>= 1).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"width must be >= 1, got {width}.")
        channels = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for layer, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if layer in (1, 3, 5):
                layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.feature_dim = 8 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # [B, 8*width]


def _resnet(name: str, small_images: bool) -> tuple[nn.Module, int]:
    network = getattr(models, name)(weights=None)
    feature_dim = network.fc.in_features
    if small_images:
        # CIFAR stem: a 3x3 stride-1 first conv and no max-pool keep 32x32 inputs at 32x32.
        network.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    network.fc = nn.Identity()
    return network, feature_dim


BACKBONES = ("resnet18", "resnet50", "convnet")


def build_backbone(
    name: str,
    *,
    small_images: bool = True,
    width: int = 32,
    pretrained: str | Path | None = None,
) -> tuple[nn.Module, int]:
    """Build a backbone and return it with its feature dimension.

    Args:
        name: ``"resnet18"``, ``"resnet50"`` or ``"convnet"``.
        small_images: use the CIFAR stem (for images of 64 px or less); ResNets only.
        width: first-stage width of ``"convnet"``.
        pretrained: None, a path to a state-dict file, or ``"imagenet"`` to load torchvision's
            ImageNet weights from torch's hub cache (never downloaded here). See
            ``load_pretrained_weights``.

    Returns:
        ``(module, feature_dim)``.

    Raises:
        ValueError: for an unknown name, or pretrained weights with ``"convnet"``.
        FileNotFoundError: when the pretrained weights file is missing.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {name!r}.")
    if name == "convnet":
        if pretrained is not None:
            raise ValueError("pretrained weights exist only for the ResNets, not for 'convnet'.")
        network = SmallConvNet(width)
        return network, network.feature_dim

    network, feature_dim = _resnet(name, small_images)
    if pretrained is not None:
        load_pretrained_weights(network, name, pretrained, skip_first_conv=small_images)
    return network, feature_dim


def _imagenet_weight_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHT_FILES[name]


def load_pretrained_weights(
    network: nn.Module,
    name: str,
    source: str | Path,
    *,
    skip_first_conv: bool = True,
) -> list[str]:
    """Load ImageNet (or other) weights into a ResNet backbone, from a local file only.

    The classifier ``fc`` is always skipped. With the CIFAR stem the first conv has another
    shape, so it keeps its fresh initialisation, as in the official MaskCon code.
    NOTE: ImageNet-pretrained weights carry fine-grained supervision from ImageNet labels.
    That makes a "coarse labels only" comparison less clean, and on ImageNet32 it leaks the
    test labels' classes. The presets here train from scratch.

    Args:
        network: a ResNet from ``build_backbone``.
        name: ``"resnet18"`` or ``"resnet50"``.
        source: a path to a state dict, or ``"imagenet"`` for torchvision's file in torch's
            hub cache (``torch.hub.get_dir()/checkpoints``).
        skip_first_conv: do not load ``conv1.weight``.

    Returns:
        The names of the parameters that were loaded.

    Raises:
        FileNotFoundError: if the file does not exist (the message explains how to get the weights).
    """
    path = _imagenet_weight_path(name) if str(source) == "imagenet" else Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found at {path}. Either download them once in an online "
            f"runtime (torchvision.models.{name}(weights='IMAGENET1K_V1') stores them in torch's "
            f"hub cache), or pass the path of a state-dict file."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    skipped = {"fc.weight", "fc.bias"} | ({"conv1.weight"} if skip_first_conv else set())
    state = {key: value for key, value in state.items() if key not in skipped}
    network.load_state_dict(state, strict=False)
    return sorted(state)
