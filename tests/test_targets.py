"""Targets against float64 loop references, golden values, properties and special cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from maskcon_mini.targets import maskcon_targets, selfcon_targets, supcon_targets

A, B_COARSE = 0, 1


# Float64 references, one sample and one queue entry at a time, written from the formulas.

def maskcon_reference(keys, queue_keys, labels, queue_labels, temperature, weight, mask=None):
    keys, queue_keys = keys.double().tolist(), queue_keys.double().tolist()
    rows = []
    for i, key in enumerate(keys):
        similarity = [sum(a * b for a, b in zip(key, entry)) for entry in queue_keys]
        same = [
            int(queue_labels[j]) == int(labels[i]) and (mask is None or bool(mask[j]))
            for j in range(len(queue_keys))
        ]
        nearest = max((s for s, ok in zip(similarity, same) if ok), default=0.0)
        weights = [math.exp((s - nearest) / temperature) if ok else 0.0
                   for s, ok in zip(similarity, same)]
        total = 1.0 + sum(weights)
        soft = [1.0 / total] + [r / total for r in weights]
        one_hot = [1.0] + [0.0] * len(weights)
        rows.append([weight * y + (1 - weight) * e for y, e in zip(soft, one_hot)])
    return torch.tensor(rows, dtype=torch.float64)


def supcon_reference(labels, queue_labels):
    rows = []
    for label in labels.tolist():
        matches = [1.0 if q == label else 0.0 for q in queue_labels.tolist()]
        total = 1.0 + sum(matches)
        rows.append([1.0 / total] + [m / total for m in matches])
    return torch.tensor(rows, dtype=torch.float64)


def naive_official_targets(keys, queue_keys, labels, queue_labels, temperature):
    """The official code's formulation: exp(s / T) masked, divided by its row sum, no shift."""
    mask = (labels[:, None] == queue_labels[None, :]).float()
    scores = torch.exp(keys @ queue_keys.T / temperature) * mask
    scores = scores / scores.max(dim=1, keepdim=True).values
    return torch.cat([torch.ones_like(scores[:, :1]), scores], 1) / (1 + scores.sum(1, keepdim=True))


def keys_with_cosines(cosines):
    """A key [1, 2] and queue keys [K, 2] whose cosines to the key are exactly `cosines`."""
    key = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[c, math.sqrt(max(0.0, 1.0 - c * c))] for c in cosines])
    return key, queue


def random_case(batch, queue, dim, coarse, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(dtype)
    queue_keys = F.normalize(torch.randn(queue, dim, generator=generator), dim=1).to(dtype)
    labels = torch.randint(0, coarse, (batch,), generator=generator)
    queue_labels = torch.randint(0, coarse, (queue,), generator=generator)
    return keys, queue_keys, labels, queue_labels


# Golden values: cosines [1.0, 0.6, 1.0, -1.0], queue coarse [A, A, B, A], anchor A.

GOLDEN = [
    (0.1, 1.0, [0.4955, 0.4955, 0.0091, 0.0, 0.0000]),
    (1.0, 1.0, [0.3564, 0.3564, 0.2389, 0.0, 0.0482]),
    (math.inf, 1.0, [0.25, 0.25, 0.25, 0.0, 0.25]),
    (1e-4, 1.0, [0.5, 0.5, 0.0, 0.0, 0.0]),
    (0.1, 0.5, [0.7477, 0.2477, 0.0045, 0.0, 0.0]),
]


@pytest.mark.parametrize("temperature, weight, expected", GOLDEN)
def test_maskcon_golden_values(temperature, weight, expected):
    key, queue = keys_with_cosines([1.0, 0.6, 1.0, -1.0])
    targets = maskcon_targets(
        key, queue, torch.tensor([A]), torch.tensor([A, A, B_COARSE, A]), temperature, weight
    )
    assert targets.shape == (1, 5)
    assert torch.allclose(targets[0], torch.tensor(expected), atol=5e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0, math.inf])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_maskcon_matches_loop_reference(dtype, temperature, weight):
    keys, queue_keys, labels, queue_labels = random_case(6, 40, 8, 3, seed=7, dtype=dtype)
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight)
    reference = maskcon_reference(keys, queue_keys, labels, queue_labels, temperature, weight)
    assert targets.dtype == torch.float32
    assert torch.allclose(targets.double(), reference, atol=2e-6, rtol=1e-5)


def test_maskcon_large_queue_small_batch():
    keys, queue_keys, labels, queue_labels = random_case(2, 4096, 16, 4, seed=3)
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 0.05, 0.5)
    reference = maskcon_reference(keys, queue_keys, labels, queue_labels, 0.05, 0.5)
    assert targets.shape == (2, 4097)
    assert torch.allclose(targets.double(), reference, atol=1e-6)


def test_maskcon_float32_under_autocast():
    # The trainer builds targets inside autocast; the key-to-queue similarities must stay float32.
    keys, queue_keys, labels, queue_labels = random_case(8, 256, 32, 3, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 0.05, 0.5)
    reference = maskcon_reference(keys, queue_keys, labels, queue_labels, 0.05, 0.5)
    assert targets.dtype == torch.float32
    assert torch.allclose(targets.double(), reference, atol=1e-6)


def test_maskcon_exp_underflow_stays_defined():
    # Every same-coarse entry is nearly opposite the key, and T is tiny: exp(s / T) underflows.
    key, queue = keys_with_cosines([-0.9, -0.95, -1.0, 0.5])
    labels, queue_labels = torch.tensor([A]), torch.tensor([A, A, A, B_COARSE])
    targets = maskcon_targets(key, queue, labels, queue_labels, temperature=1e-4)
    assert torch.isfinite(targets).all()
    assert torch.allclose(targets[0], torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]))
    # The unshifted formulation divides 0 by 0 here; this test would catch it.
    assert torch.isnan(naive_official_targets(key, queue, labels, queue_labels, 1e-4)).any()


def test_maskcon_row_without_same_coarse_entry():
    keys, queue_keys, _, _ = random_case(3, 10, 4, 2, seed=1)
    labels = torch.tensor([5, 0, 5])
    queue_labels = torch.zeros(10, dtype=torch.long)
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 0.05)
    for row in (0, 2):
        assert targets[row, 0] == 1.0
        assert targets[row, 1:].abs().sum() == 0
    assert targets[1, 0] < 1.0
    assert torch.isnan(naive_official_targets(keys, queue_keys, labels, queue_labels, 0.05)).any()


@pytest.mark.parametrize("mask_shape", ["per_queue", "per_sample"])
def test_maskcon_queue_mask_removes_entries(mask_shape):
    keys, queue_keys, labels, queue_labels = random_case(4, 12, 4, 2, seed=5)
    mask = torch.ones(12, dtype=torch.bool)
    mask[[0, 3, 7]] = False
    passed = mask if mask_shape == "per_queue" else mask.expand(4, 12).clone()
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 0.1, queue_mask=passed)
    reference = maskcon_reference(keys, queue_keys, labels, queue_labels, 0.1, 1.0, mask=mask)
    assert (targets[:, 1:][:, ~mask] == 0).all()
    assert torch.allclose(targets.double(), reference, atol=1e-6)


def test_supcon_matches_loop_reference():
    _, _, labels, queue_labels = random_case(8, 50, 4, 5, seed=11)
    targets = supcon_targets(labels, queue_labels)
    assert torch.allclose(targets.double(), supcon_reference(labels, queue_labels), atol=1e-7)


def test_supcon_example_row():
    targets = supcon_targets(torch.tensor([0]), torch.tensor([0, 1, 0]))
    assert torch.allclose(targets, torch.tensor([[1 / 3, 1 / 3, 0.0, 1 / 3]]))


def test_selfcon_is_one_hot():
    targets = selfcon_targets(3, 5)
    assert targets.shape == (3, 6)
    assert (targets[:, 0] == 1).all()
    assert (targets[:, 1:] == 0).all()


# Special cases of MaskCon.

def test_weight_zero_equals_selfcon_exactly():
    keys, queue_keys, labels, queue_labels = random_case(5, 30, 8, 3, seed=2)
    for temperature in (1e-4, 0.05, 1.0, math.inf):
        targets = maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight=0.0)
        assert torch.equal(targets, selfcon_targets(5, 30))


def test_infinite_temperature_equals_supcon_exactly():
    keys, queue_keys, labels, queue_labels = random_case(5, 30, 8, 3, seed=4)
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, math.inf, weight=1.0)
    assert torch.equal(targets, supcon_targets(labels, queue_labels))


def test_zero_temperature_limit_picks_nearest():
    keys, queue_keys, labels, queue_labels = random_case(6, 40, 8, 2, seed=9)
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 1e-6, weight=1.0)
    similarity = keys @ queue_keys.T
    for i in range(6):
        same = queue_labels == labels[i]
        nearest = torch.where(same, similarity[i], torch.tensor(-math.inf)).argmax()
        assert targets[i, 0] == pytest.approx(0.5)
        assert targets[i, 1 + nearest] == pytest.approx(0.5)


# Validation.

@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, -math.inf, "0.1", None, True])
def test_invalid_temperature_rejected(temperature):
    keys, queue_keys, labels, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"temperature must be .*\(0, inf\]"):
        maskcon_targets(keys, queue_keys, labels, queue_labels, temperature)


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, "1"])
def test_invalid_weight_rejected(weight):
    keys, queue_keys, labels, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"weight must be .*\[0, 1\]"):
        maskcon_targets(keys, queue_keys, labels, queue_labels, 0.1, weight)


def test_mismatched_dims_name_both_shapes():
    keys, queue_keys, labels, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        maskcon_targets(keys, torch.randn(4, 5), labels, queue_labels, 0.1)


def test_mismatched_label_count_names_shapes():
    keys, queue_keys, _, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        maskcon_targets(keys, queue_keys, torch.tensor([0, 1, 0]), queue_labels, 0.1)


def test_float_labels_rejected():
    keys, queue_keys, labels, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match="integer tensor"):
        maskcon_targets(keys, queue_keys, labels.float(), queue_labels, 0.1)


def test_bad_queue_mask_shape_rejected():
    keys, queue_keys, labels, queue_labels = random_case(2, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"queue_mask must have shape .*got \(3,\)"):
        maskcon_targets(keys, queue_keys, labels, queue_labels, 0.1,
                        queue_mask=torch.ones(3, dtype=torch.bool))


# Properties.

@st.composite
def target_cases(draw):
    batch = draw(st.integers(1, 6))
    queue = draw(st.integers(1, 40))
    coarse = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    temperature = draw(st.floats(1e-4, 1e6))
    weight = draw(st.floats(0.0, 1.0))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return random_case(batch, queue, 4, coarse, seed, dtype), temperature, weight


@settings(max_examples=150, deadline=None)
@given(target_cases())
def test_maskcon_properties(case):
    (keys, queue_keys, labels, queue_labels), temperature, weight = case
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, temperature, weight)
    same = labels[:, None] == queue_labels[None, :]

    assert torch.isfinite(targets).all()
    assert (targets >= 0).all()
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(labels)), atol=1e-5)
    assert (targets[:, 1:][~same] == 0).all()
    assert (targets[:, 0] >= (1 - weight) - 1e-6).all()

    # Among same-coarse entries, a larger similarity never gets a smaller weight.
    similarity = keys.float() @ queue_keys.float().T
    for i in range(len(labels)):
        s, r = similarity[i][same[i]], targets[i, 1:][same[i]]
        order = torch.argsort(s)
        assert (r[order][1:] >= r[order][:-1]).all()
