"""Logits, soft cross-entropy and the method registry against loop references."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskcon_mini.losses import (
    METHODS,
    LossBatch,
    LossSettings,
    compute_loss,
    contrastive_logits,
    soft_cross_entropy,
)
from maskcon_mini.targets import maskcon_targets, supcon_targets


def make_batch(batch=6, queue=20, dim=8, coarse=3, seed=0, with_classifier=False):
    generator = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).requires_grad_()
    keys = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).requires_grad_()
    queue_keys = F.normalize(torch.randn(queue, dim, generator=generator), dim=1).requires_grad_()
    labels = torch.randint(0, coarse, (batch,), generator=generator)
    queue_labels = torch.randint(0, coarse, (queue,), generator=generator)
    class_logits = None
    if with_classifier:
        class_logits = torch.randn(batch, coarse, generator=generator).requires_grad_()
    return LossBatch(queries, keys, queue_keys, labels, queue_labels, None, class_logits)


def soft_cross_entropy_reference(logits, targets):
    total = 0.0
    for row_logits, row_targets in zip(logits.double().tolist(), targets.double().tolist()):
        log_normaliser = math.log(sum(math.exp(v) for v in row_logits))
        total -= sum(t * (v - log_normaliser) for v, t in zip(row_logits, row_targets) if t > 0)
    return total / len(logits)


def test_logits_positive_in_column_zero():
    batch = make_batch()
    logits = contrastive_logits(batch.queries, batch.keys, batch.queue_keys, 0.1).tolist()
    queries, keys = batch.queries.tolist(), batch.keys.tolist()
    queue_keys = batch.queue_keys.tolist()
    assert len(logits) == 6
    assert len(logits[0]) == 21
    for i in range(6):
        positive = sum(a * b for a, b in zip(queries[i], keys[i])) / 0.1
        assert logits[i][0] == pytest.approx(positive, abs=1e-5)
        for j in range(20):
            expected = sum(a * b for a, b in zip(queries[i], queue_keys[j])) / 0.1
            assert logits[i][1 + j] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_soft_cross_entropy_matches_reference(dtype):
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 9, generator=generator) * 4).to(dtype)
    targets = torch.rand(5, 9, generator=generator)
    targets[:, 3] = 0
    targets = targets / targets.sum(1, keepdim=True)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_cross_entropy_reference(logits, targets), rel=1e-5)


def test_soft_cross_entropy_float32_under_autocast():
    logits = torch.randn(4, 7)
    targets = torch.softmax(torch.randn(4, 7), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_cross_entropy(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_cross_entropy_reference(logits.bfloat16(), targets),
                                        rel=1e-5)


def test_soft_cross_entropy_zero_target_on_masked_logit():
    logits = torch.tensor([[5.0, -1e4, 1.0]])
    targets = torch.tensor([[0.5, 0.0, 0.5]])
    loss = soft_cross_entropy(logits, targets)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(soft_cross_entropy_reference(logits, targets), rel=1e-6)


def test_soft_cross_entropy_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("temperature", [0.0, -0.1, math.inf, math.nan])
def test_logits_reject_bad_temperature(temperature):
    batch = make_batch()
    with pytest.raises(ValueError, match="contrastive temperature"):
        contrastive_logits(batch.queries, batch.keys, batch.queue_keys, temperature)


def test_masked_queue_entries_act_as_nothing():
    batch = make_batch(queue=12)
    mask = torch.ones(12, dtype=torch.bool)
    mask[[2, 5, 6]] = False
    settings = LossSettings("maskcon", weight=0.7)
    masked = compute_loss(LossBatch(batch.queries, batch.keys, batch.queue_keys, batch.labels,
                                    batch.queue_labels, mask), settings)
    kept = compute_loss(LossBatch(batch.queries, batch.keys, batch.queue_keys[mask], batch.labels,
                                  batch.queue_labels[mask]), settings)
    assert masked.loss.item() == pytest.approx(kept.loss.item(), rel=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradients_reach_only_queries(method):
    batch = make_batch(with_classifier=True)
    output = compute_loss(batch, LossSettings(method, weight=0.5))
    output.loss.backward()
    assert batch.queries.grad is not None and batch.queries.grad.abs().sum() > 0
    assert batch.keys.grad is None
    assert batch.queue_keys.grad is None
    if method == "coins":
        assert batch.class_logits.grad.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_loss_matches_reference(method):
    batch = make_batch(with_classifier=True, seed=3)
    settings = LossSettings(method, contrastive_temperature=0.2, target_temperature=0.1, weight=0.4)
    output = compute_loss(batch, settings)
    logits = contrastive_logits(batch.queries, batch.keys, batch.queue_keys, 0.2).detach()
    one_hot = torch.zeros_like(logits)
    one_hot[:, 0] = 1
    supcon = supcon_targets(batch.labels, batch.queue_labels)
    selfcon_value = soft_cross_entropy_reference(logits, one_hot)
    supcon_value = soft_cross_entropy_reference(logits, supcon)
    classifier_value = F.cross_entropy(batch.class_logits.detach().double(), batch.labels).item()
    maskcon = maskcon_targets(batch.keys, batch.queue_keys, batch.labels, batch.queue_labels, 0.1, 0.4)
    expected = {
        "selfcon": selfcon_value,
        "supcon": supcon_value,
        "grafit": 0.4 * supcon_value + 0.6 * selfcon_value,
        "coins": 0.4 * classifier_value + 0.6 * selfcon_value,
        "maskcon": soft_cross_entropy_reference(logits, maskcon),
    }[method]
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight", [0.1, 0.5, 0.9])
def test_grafit_equals_maskcon_at_infinite_temperature(weight):
    batch = make_batch(seed=5)
    grafit = compute_loss(batch, LossSettings("grafit", weight=weight))
    maskcon = compute_loss(batch, LossSettings("maskcon", target_temperature=math.inf,
                                               weight=weight))
    assert torch.equal(grafit.targets, maskcon.targets)
    assert maskcon.loss.item() == pytest.approx(grafit.loss.item(), rel=1e-6, abs=1e-7)


def test_coins_is_not_a_target_special_case():
    # CoIns depends on a classifier head that the logits never see: two heads that disagree
    # give two CoIns losses for identical logits, keys and queue, while any target-based
    # method (every MaskCon setting) gives one value for them.
    batch = make_batch(with_classifier=True, seed=8)
    other = LossBatch(batch.queries, batch.keys, batch.queue_keys, batch.labels,
                      batch.queue_labels, None, batch.class_logits.detach() + 3 * torch.randn(6, 3))
    settings = LossSettings("coins", weight=0.5)
    assert compute_loss(batch, settings).loss.item() != pytest.approx(
        compute_loss(other, settings).loss.item())
    for temperature in (0.05, 1.0, math.inf):
        mc = LossSettings("maskcon", target_temperature=temperature, weight=0.5)
        assert compute_loss(batch, mc).loss.item() == compute_loss(other, mc).loss.item()


def test_coins_without_classifier_rejected():
    with pytest.raises(ValueError, match="num_coarse_classes"):
        compute_loss(make_batch(), LossSettings("coins"))


@pytest.mark.parametrize("field, value, pattern", [
    ("method", "simclr", "method must be one of"),
    ("contrastive_temperature", 0.0, r"contrastive_temperature must be in \(0, inf\]"),
    ("contrastive_temperature", math.inf, "contrastive_temperature must be finite"),
    ("target_temperature", -1.0, r"target_temperature must be in \(0, inf\]"),
    ("weight", 1.1, r"weight must be in \[0, 1\]"),
])
def test_loss_settings_validation(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        LossSettings(**{field: value})


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_finite_in_half_precision(method, dtype):
    batch = make_batch(with_classifier=True, seed=2)
    half = LossBatch(batch.queries.detach().to(dtype), batch.keys.detach().to(dtype),
                     batch.queue_keys.detach().to(dtype), batch.labels, batch.queue_labels,
                     None, batch.class_logits.detach().to(dtype))
    for temperature in (1e-4, 0.05, 1e6):
        output = compute_loss(half, LossSettings(method, target_temperature=temperature))
        assert output.loss.dtype == torch.float32
        assert torch.isfinite(output.loss)
