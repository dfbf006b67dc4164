"""The momentum-contrast model: EMA update, no key gradients, queue filling, a full step."""

from pathlib import Path

import pytest
import torch
from torchvision import models

from maskcon_mini.backbones import build_backbone, load_pretrained_weights
from maskcon_mini.losses import METHODS, LossSettings
from maskcon_mini.model import MomentumContrast, fine_mass_share


def tiny_model(**options):
    defaults = dict(width=4, queue_size=16, projection_dim=8, hidden_dim=16, num_coarse_classes=2)
    defaults.update(options)
    return MomentumContrast("convnet", **defaults)


def test_momentum_update_matches_formula():
    torch.manual_seed(0)
    model = tiny_model(momentum=0.9)
    with torch.no_grad():
        for parameter in model.encoder_q.parameters():
            parameter.add_(torch.randn_like(parameter))
    query = {k: v.clone() for k, v in model.encoder_q.state_dict().items()}
    key = {k: v.clone() for k, v in model.encoder_k.state_dict().items()}
    model.momentum_update()
    for name, value in model.encoder_k.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.allclose(value, 0.9 * key[name] + 0.1 * query[name], atol=1e-6), name
        else:
            assert torch.equal(value, query[name]), name


def test_momentum_zero_copies_query_encoder():
    model = tiny_model(momentum=0.0)
    with torch.no_grad():
        for parameter in model.encoder_q.parameters():
            parameter.add_(1.0)
    model.momentum_update()
    for q, k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(q, k)


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5])
def test_invalid_momentum_rejected(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        tiny_model(momentum=momentum)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_key_encoder_never_gets_gradients(method):
    torch.manual_seed(1)
    model = tiny_model()
    model.fill_queue([(torch.randn(16, 3, 32, 32), torch.arange(16) % 2, torch.arange(16) + 100)])
    images = torch.randn(4, 3, 32, 32)
    output = model(images, images + 0.1, torch.tensor([0, 1, 0, 1]), torch.arange(4),
                   LossSettings(method))
    output["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    if method == "coins":
        assert model.classifier.weight.grad.abs().sum() > 0


def test_step_enqueues_after_the_loss():
    torch.manual_seed(2)
    model = tiny_model(queue_size=8)
    images = torch.randn(4, 3, 32, 32)
    output = model(images, images, torch.tensor([0, 1, 0, 1]), torch.arange(4),
                   LossSettings("maskcon"))
    # The queue was empty during the loss, so every target row is one-hot on the positive.
    assert output["positive_mass"] == 1.0
    assert model.queue.num_filled == 4
    assert torch.allclose(model.queue.keys[:4], output["keys"])
    for name in ("positive_logit", "target_entropy", "positive_mass"):
        assert output[name].shape == (), name
        assert not output[name].requires_grad, name


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_step_keeps_float32_state(method, dtype):
    # The CUDA path runs the step under autocast with channels_last images. CPU autocast runs
    # the same code, so it checks here what stays float32: queue, targets and loss.
    torch.manual_seed(4)
    model = tiny_model(queue_size=16).to(memory_format=torch.channels_last)
    model.fill_queue([(torch.randn(16, 3, 32, 32), torch.arange(16) % 2, torch.arange(16) + 100)])
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 1, 0, 1])

    with torch.autocast("cpu", dtype=dtype):
        output = model(images, images + 0.1, labels, torch.arange(4), LossSettings(method))
    output["loss"].backward()

    assert output["loss"].dtype == torch.float32
    assert output["targets"].dtype == torch.float32
    assert torch.isfinite(output["loss"])
    assert torch.allclose(output["targets"].sum(dim=1), torch.ones(4))
    assert model.queue.keys.dtype == torch.float32
    assert torch.allclose(model.queue.keys.norm(dim=1), torch.ones(16), atol=1e-2)
    gradients = [p.grad for p in model.encoder_q.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)


def test_own_stale_key_is_masked():
    torch.manual_seed(3)
    model = tiny_model(queue_size=8)
    images = torch.randn(4, 3, 32, 32)
    labels, indices = torch.tensor([0, 0, 0, 0]), torch.tensor([10, 11, 12, 13])
    model(images, images, labels, indices, LossSettings("maskcon"))
    output = model(images, images, labels, indices, LossSettings("maskcon"))
    mask = output["queue_mask"]
    assert mask.shape == (4, 8)
    for row, index in enumerate(indices.tolist()):
        own = (model.queue.indices == index).nonzero().flatten()
        slot_of_previous = own[0]  # the first write of this index, from the earlier step
        assert not mask[row, slot_of_previous]
        assert output["targets"][row, 1 + slot_of_previous] == 0


def test_fill_queue_from_key_encoder():
    model = tiny_model(queue_size=10)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), torch.arange(4) + 4 * i)
               for i in range(3)]
    written = model.fill_queue(batches)
    assert written == 10
    assert model.queue.is_full
    assert model.queue.indices.tolist() == list(range(10))


def test_fill_queue_rejects_too_little_data():
    model = tiny_model(queue_size=10)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), torch.arange(4))]
    with pytest.raises(ValueError, match=r"ran out after 4 keys.*K=10"):
        model.fill_queue(batches)


def test_single_device_shuffle_cannot_change_batchnorm():
    # MoCo's shuffle BN permutes the key batch and un-permutes the output. On one device the
    # BatchNorm statistics are the same for any order, so the keys come out identical.
    torch.manual_seed(4)
    model = tiny_model()
    images = torch.randn(8, 3, 32, 32)
    plain = model.encoder_k(images)[1]
    permutation = torch.randperm(8)
    shuffled = model.encoder_k(images[permutation])[1][torch.argsort(permutation)]
    assert torch.allclose(plain, shuffled, atol=1e-5)


@pytest.mark.parametrize("name, feature_dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_cifar_stem(name, feature_dim):
    network, dim = build_backbone(name, small_images=True)
    assert dim == feature_dim
    assert network.conv1.kernel_size == (3, 3)
    assert network.conv1.stride == (1, 1)
    assert isinstance(network.maxpool, torch.nn.Identity)
    network.eval()
    with torch.no_grad():
        assert network(torch.randn(2, 3, 32, 32)).shape == (2, feature_dim)


def test_resnet_imagenet_stem_kept_for_large_images():
    network, _ = build_backbone("resnet18", small_images=False)
    assert network.conv1.kernel_size == (7, 7)
    assert isinstance(network.maxpool, torch.nn.MaxPool2d)


def test_pretrained_weights_from_local_file(tmp_path: Path):
    source = models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    network, _ = build_backbone("resnet18", small_images=True, pretrained=path)
    assert torch.equal(network.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert network.conv1.weight.shape == (64, 3, 3, 3)
    loaded = load_pretrained_weights(models.resnet18(weights=None), "resnet18", path,
                                     skip_first_conv=False)
    assert "conv1.weight" in loaded
    assert "fc.weight" not in loaded


def test_missing_pretrained_file_explains_fix(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"not found at .*missing\.pth.*IMAGENET1K_V1"):
        build_backbone("resnet18", pretrained=tmp_path / "missing.pth")


def test_imagenet_weights_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hub cache"):
        build_backbone("resnet18", pretrained="imagenet")


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match=r"backbone must be one of .*'vit'"):
        build_backbone("vit")


def test_fine_mass_share_counts_queue_mass_only():
    targets = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]])
    share = fine_mass_share(targets, torch.tensor([3, 3]), torch.tensor([3, 4, 3]))
    assert share == pytest.approx(0.5)  # the second row has no queue mass and is left out
