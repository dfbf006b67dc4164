"""Tests of maskcon_mini.evaluate against brute-force float64 references and hand-placed cases."""

from __future__ import annotations

import doctest
import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

import maskcon_mini.evaluate as evaluate
from maskcon_mini.evaluate import (
    evaluate_embeddings,
    extract_features,
    knn_accuracy,
    map_at_r,
    recall_at_k,
)

NUM_ITEMS = 48
NUM_BANK_ITEMS = 40
DIM = 8
KS = (1, 2, 5, 10, NUM_ITEMS - 1)
KNN_K = 5
KNN_TEMPERATURE = 0.1
CHUNK_SIZES = (1, NUM_ITEMS - 1, NUM_ITEMS, NUM_ITEMS + 7)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# A float32 cosine similarity of 8-dimensional rows differs from the float64 one by roughly
# 1e-7 (an estimate from float32 rounding). The random cases are checked to have no two
# similarities of one query closer than this, so no ordering can flip by rounding alone.
MIN_SIMILARITY_GAP = 2e-6


# ------------------------------------------------------------------ float64 reference loops


def _unit_rows(embeddings: torch.Tensor) -> list[np.ndarray]:
    rows = embeddings.to(torch.float64).numpy()
    return [row / np.linalg.norm(row) for row in rows]


def _reference_neighbours(queries, gallery, query_index=None):
    """Return (similarity, gallery index) pairs by descending similarity, without query_index."""
    pairs = []
    for j, item in enumerate(gallery):
        if j == query_index:
            continue
        pairs.append((float(np.dot(queries, item)), j))
    return sorted(pairs, key=lambda pair: (-pair[0], pair[1]))


def reference_recall(embeddings, labels, ks):
    rows = _unit_rows(embeddings)
    labels = labels.tolist()
    hits = {k: 0 for k in ks}

    for i, row in enumerate(rows):
        neighbours = _reference_neighbours(row, rows, query_index=i)
        for k in ks:
            if any(labels[j] == labels[i] for _, j in neighbours[:k]):
                hits[k] += 1

    return {k: hits[k] / len(rows) for k in ks}


def reference_map_at_r(embeddings, labels):
    rows = _unit_rows(embeddings)
    labels = labels.tolist()
    precisions = []

    for i, row in enumerate(rows):
        r = sum(1 for j in range(len(rows)) if j != i and labels[j] == labels[i])
        if r == 0:
            continue

        neighbours = _reference_neighbours(row, rows, query_index=i)
        relevant_so_far = 0
        total = 0.0
        for rank, (_, j) in enumerate(neighbours[:r], start=1):
            if labels[j] == labels[i]:
                relevant_so_far += 1
                total += relevant_so_far / rank
        precisions.append(total / r)

    return sum(precisions) / len(precisions)


def reference_knn(queries, query_labels, bank=None, bank_labels=None, k=200, temperature=0.1):
    query_rows = _unit_rows(queries)
    leave_one_out = bank is None
    bank_rows = query_rows if leave_one_out else _unit_rows(bank)
    bank_labels = query_labels.tolist() if leave_one_out else bank_labels.tolist()
    correct = 0

    for i, row in enumerate(query_rows):
        neighbours = _reference_neighbours(row, bank_rows, query_index=i if leave_one_out else None)
        votes: dict[int, float] = {}
        for similarity, j in neighbours[:k]:
            label = bank_labels[j]
            votes[label] = votes.get(label, 0.0) + math.exp(similarity / temperature)

        best = max(votes.values())
        prediction = min(label for label, vote in votes.items() if vote == best)
        correct += prediction == int(query_labels[i])

    return correct / len(query_rows)


def _drop_first_recall_at_1(embeddings, labels):
    """Compute Recall@1 the rank-based way: sort all N items by similarity and drop rank 1."""
    rows = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=1)
    similarities = rows @ rows.T  # [N, N]
    order = similarities.sort(dim=1, descending=True, stable=True).indices  # [N, N]
    first_kept = order[:, 1]  # [N]
    return (labels[first_kept] == labels).double().mean().item()


def _min_similarity_gap(queries, gallery, exclude_self):
    """Return the smallest gap between two similarities of one query to its gallery."""
    query_rows = np.stack(_unit_rows(queries))
    gallery_rows = np.stack(_unit_rows(gallery))
    similarities = query_rows @ gallery_rows.T  # [Nq, Ng]
    if exclude_self:
        off_diagonal = ~np.eye(len(query_rows), dtype=bool)
        similarities = similarities[off_diagonal].reshape(len(query_rows), -1)
    return np.diff(np.sort(similarities, axis=1), axis=1).min()


# ------------------------------------------------------------------------------ test data


@functools.lru_cache(maxsize=None)
def random_case(dtype: torch.dtype):
    """Make random embeddings in ``dtype``, few labels (many label ties) and one singleton label."""
    generator = torch.Generator().manual_seed(28)
    embeddings = torch.randn(NUM_ITEMS, DIM, generator=generator).to(dtype)
    bank = torch.randn(NUM_BANK_ITEMS, DIM, generator=generator).to(dtype)

    fine = torch.randint(0, 5, (NUM_ITEMS,), generator=generator)
    fine[-1] = 99  # the only item of its label, so its R is 0
    coarse = fine // 2
    bank_labels = torch.randint(0, 6, (NUM_BANK_ITEMS,), generator=generator)

    for gallery, exclude_self in [(embeddings, True), (bank, False)]:
        gap = _min_similarity_gap(embeddings, gallery, exclude_self)
        assert gap > MIN_SIMILARITY_GAP, f"test data has a near-tie of {gap:.2e}, use another seed"

    references = {
        "recall": reference_recall(embeddings, fine, KS),
        "coarse_recall": reference_recall(embeddings, coarse, (1,)),
        "map_at_r": reference_map_at_r(embeddings, fine),
        "knn_leave_one_out": reference_knn(embeddings, fine, k=KNN_K, temperature=KNN_TEMPERATURE),
        "knn_bank": reference_knn(
            embeddings, fine, bank, bank_labels, k=KNN_K, temperature=KNN_TEMPERATURE
        ),
    }
    return embeddings, fine, coarse, bank, bank_labels, references


def _points_on_arc(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


# ------------------------------------------------------------------ agreement with references


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_recall_matches_reference(dtype, chunk_size):
    embeddings, fine, _, _, _, references = random_case(dtype)

    result = recall_at_k(embeddings, fine, ks=KS, chunk_size=chunk_size)

    assert list(result) == list(KS)
    for k in KS:
        assert result[k] == pytest.approx(references["recall"][k], abs=1e-12), f"K={k}"


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_map_at_r_matches_reference(dtype, chunk_size):
    embeddings, fine, _, _, _, references = random_case(dtype)

    result = map_at_r(embeddings, fine, chunk_size=chunk_size)

    assert result == pytest.approx(references["map_at_r"], abs=1e-12)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_knn_leave_one_out_matches_reference(dtype, chunk_size):
    embeddings, fine, _, _, _, references = random_case(dtype)

    result = knn_accuracy(
        embeddings, fine, k=KNN_K, temperature=KNN_TEMPERATURE, chunk_size=chunk_size
    )

    assert result == pytest.approx(references["knn_leave_one_out"], abs=1e-12)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_knn_bank_matches_reference(dtype, chunk_size):
    embeddings, fine, _, bank, bank_labels, references = random_case(dtype)

    result = knn_accuracy(
        embeddings, fine, bank, bank_labels, k=KNN_K, temperature=KNN_TEMPERATURE,
        chunk_size=chunk_size,
    )

    assert result == pytest.approx(references["knn_bank"], abs=1e-12)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_bank", [False, True], ids=["leave_one_out", "bank"])
def test_evaluate_embeddings_matches_reference(dtype, chunk_size, use_bank):
    embeddings, fine, coarse, bank, bank_labels, references = random_case(dtype)
    knn_bank = (bank, bank_labels) if use_bank else None

    result = evaluate_embeddings(
        embeddings, fine, coarse, ks=KS, knn_bank=knn_bank, knn_k=KNN_K,
        knn_temperature=KNN_TEMPERATURE, chunk_size=chunk_size,
    )

    expected_knn = references["knn_bank" if use_bank else "knn_leave_one_out"]
    assert set(result) == {"recall", "map_at_r", "knn_accuracy", "coarse_recall_at_1"}
    assert result["recall"] == pytest.approx(references["recall"], abs=1e-12)
    assert result["map_at_r"] == pytest.approx(references["map_at_r"], abs=1e-12)
    assert result["knn_accuracy"] == pytest.approx(expected_knn, abs=1e-12)
    assert result["coarse_recall_at_1"] == pytest.approx(references["coarse_recall"][1], abs=1e-12)


def test_evaluate_embeddings_is_json_friendly():
    embeddings, fine, coarse, _, _, _ = random_case(torch.float32)

    result = evaluate_embeddings(embeddings, fine, coarse, ks=(1, 5), knn_k=KNN_K)
    round_trip = json.loads(json.dumps(result))

    assert all(type(k) is int for k in result["recall"])
    assert round_trip["recall"] == {"1": result["recall"][1], "5": result["recall"][5]}
    assert all(type(result[name]) is float for name in ("map_at_r", "knn_accuracy"))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    num_items=st.integers(3, 30),
    num_labels=st.integers(1, 4),
    chunk_size=st.integers(1, 35),
)
def test_recall_independent_of_chunk_size(seed, num_items, num_labels, chunk_size):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_items, 6, generator=generator)
    labels = torch.randint(0, num_labels, (num_items,), generator=generator)
    ks = tuple(range(1, num_items))

    # Blocks of different shapes may round a similarity differently, which can reorder a
    # near-tie. Such draws are skipped.
    assume(_min_similarity_gap(embeddings, embeddings, exclude_self=True) > MIN_SIMILARITY_GAP)

    chunked = recall_at_k(embeddings, labels, ks=ks, chunk_size=chunk_size)
    whole = recall_at_k(embeddings, labels, ks=ks, chunk_size=num_items)

    assert chunked == whole
    values = list(chunked.values())
    assert values == sorted(values), "Recall@K must not decrease as K grows"
    assert values[-1] == pytest.approx(float((torch.bincount(labels)[labels] > 1).double().mean()))


# ----------------------------------------------------------------------- hand-placed cases


def test_recall_hand_placed_arc():
    # Angles 0, 10, 30 and 70 degrees: the nearest neighbours by angle are 0->10, 10->0,
    # 30->10 and 70->30. Only the item at 30 degrees misses at K=1 and K=2 (its first two
    # neighbours have label 0), and it hits at K=3.
    embeddings = _points_on_arc([0, 10, 30, 70])
    labels = torch.tensor([0, 0, 1, 1])

    result = recall_at_k(embeddings, labels, ks=(1, 2, 3))

    assert result == {1: 0.75, 2: 0.75, 3: 1.0}


def test_map_at_r_hand_placed_arc():
    # R = 1 for every query, so AP@R is 1 when the nearest neighbour shares the label.
    # The query at 30 degrees has a label-0 nearest neighbour, so MAP@R = 3/4.
    embeddings = _points_on_arc([0, 10, 30, 70])

    assert map_at_r(embeddings, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_map_at_r_skips_queries_with_r_zero():
    # Angles 0, 10, 25, 45 with labels 0, 1, 0, 0. The label-1 item has R = 0. The others
    # have R = 2 and rankings (1 = relevant) [0, 1], [0, 1] and [1, 0], so AP@R is 1/4, 1/4
    # and 1/2. Their mean is 1/3. Counting the R = 0 query as 0 would give 1/4.
    embeddings = _points_on_arc([0, 10, 25, 45])
    labels = torch.tensor([0, 1, 0, 0])

    assert map_at_r(embeddings, labels) == pytest.approx(1 / 3)
    assert reference_map_at_r(embeddings, labels) == pytest.approx(1 / 3)


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_self_excluded_by_index_not_rank(chunk_size):
    # Rows 0 and 1 are identical with different labels, and rows 2 and 3 are each other's
    # nearest neighbour with a shared label. Excluding self by index gives Recall@1 = 1/2.
    # A stable sort ranks row 0 before row 1 in row 1's list, so dropping rank 1 drops row 0
    # and keeps row 1 itself, which gives 3/4.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 2, 2])

    by_index = reference_recall(embeddings, labels, (1,))[1]
    drop_first = _drop_first_recall_at_1(embeddings, labels)

    assert by_index == 0.5
    assert drop_first == 0.75, "the case must separate the two exclusion rules"
    assert recall_at_k(embeddings, labels, ks=(1,), chunk_size=chunk_size)[1] == by_index
    assert knn_accuracy(embeddings, labels, k=1, chunk_size=chunk_size) == by_index


def test_identical_rows_never_match_themselves():
    # All rows are the same point and every label is distinct, so no query has a hit.
    embeddings = torch.ones(6, 4)
    labels = torch.arange(6)

    assert recall_at_k(embeddings, labels, ks=(1, 5), chunk_size=4) == {1: 0.0, 5: 0.0}
    assert knn_accuracy(embeddings, labels, k=5, chunk_size=4) == 0.0


def test_knn_leave_one_out_excludes_own_vote():
    # With k=1 a query's own vote would always win and give accuracy 1. Without it, the
    # query at 30 degrees takes the label of its neighbour at 10 degrees and is wrong.
    embeddings = _points_on_arc([0, 10, 30, 70])
    labels = torch.tensor([0, 0, 1, 1])

    assert knn_accuracy(embeddings, labels, k=1) == 0.75
    assert knn_accuracy(embeddings, labels, k=3, temperature=0.05) == 0.75


def test_knn_bank_weights_votes_by_similarity():
    # One bank item of label 0 is 1 degree from the query, and two of label 1 are 60 degrees
    # away. At tau = 0.1, exp(1.0 / 0.1) outweighs 2 * exp(0.5 / 0.1), so label 0 wins. At
    # tau = 100 the weights are nearly equal, so the majority label 1 wins.
    bank = _points_on_arc([1, 60, -60])
    bank_labels = torch.tensor([0, 1, 1])
    query = _points_on_arc([0])

    assert knn_accuracy(query, torch.tensor([0]), bank, bank_labels, k=3, temperature=0.1) == 1.0
    assert knn_accuracy(query, torch.tensor([1]), bank, bank_labels, k=3, temperature=100.0) == 1.0


def test_knn_bank_hand_placed():
    bank = _points_on_arc([0, 90])
    bank_labels = torch.tensor([0, 1])
    queries = _points_on_arc([10, 80, 20, 30])
    # The last query has label 7, which no bank item has, so it is always wrong.
    query_labels = torch.tensor([0, 1, 1, 7])

    assert knn_accuracy(queries, query_labels, bank, bank_labels, k=1) == 0.5
    assert knn_accuracy(queries, query_labels, bank, bank_labels, k=2) == 0.5


def test_knn_tie_between_labels_goes_to_smallest_label():
    bank = _points_on_arc([30, -30])
    query = _points_on_arc([0])

    assert knn_accuracy(query, torch.tensor([3]), bank, torch.tensor([5, 3]), k=2) == 1.0


def test_normalize_false_uses_dot_products():
    # By cosine, item 1 is nearest to item 0. By dot product the long item 2 is.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.1], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1])

    assert recall_at_k(embeddings, labels, ks=(1,))[1] == pytest.approx(2 / 3)
    assert recall_at_k(embeddings, labels, ks=(1,), normalize=False)[1] == pytest.approx(0.0)


def test_extreme_magnitudes_normalise_without_overflow():
    embeddings = torch.tensor([[3e38, 0.0], [3e38, 1e37], [0.0, 1e-30], [1e-31, 1e-30]])
    labels = torch.tensor([0, 0, 1, 1])

    assert recall_at_k(embeddings, labels, ks=(1,)) == {1: 1.0}


def test_zero_row_has_similarity_zero():
    # The zero row's similarity to every item is 0, below the 0.99 between items 1 and 2. Its
    # own neighbours all have label 0, so it misses whichever of them top-k picks.
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1]])
    labels = torch.tensor([1, 0, 0])

    assert recall_at_k(embeddings, labels, ks=(1,)) == {1: pytest.approx(2 / 3)}


def test_labels_accept_numpy_and_lists():
    embeddings = _points_on_arc([0, 10, 30, 70])

    from_numpy = recall_at_k(embeddings.numpy(), np.array([0, 0, 1, 1]), ks=(1,))
    from_list = recall_at_k(embeddings.tolist(), [0, 0, 1, 1], ks=(1,))

    assert from_numpy == from_list == {1: 0.75}


# ------------------------------------------------------------------------- memory bound


class TensorSizeRecorder(TorchFunctionMode):
    """Record the largest tensor that any torch function returns, and every matmul output dtype."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.max_shape = None
        self.matmul_dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))

        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.max_numel:
                self.max_numel = tensor.numel()
                self.max_shape = tuple(tensor.shape)

        if getattr(func, "__name__", "") in {"matmul", "__matmul__", "mm"}:
            self.matmul_dtypes.add(output.dtype)

        return output


def _dense_recall_at_1(embeddings, labels):
    features = torch.nn.functional.normalize(embeddings, dim=1)
    similarities = features @ features.T  # [N, N]
    similarities.fill_diagonal_(float("-inf"))
    nearest = similarities.topk(1, dim=1).indices[:, 0]
    return (labels[nearest] == labels).float().mean().item()


MEMORY_CASE_ITEMS = 600


@functools.lru_cache(maxsize=None)
def memory_case():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(MEMORY_CASE_ITEMS, 8, generator=generator)
    labels = torch.randint(0, 20, (MEMORY_CASE_ITEMS,), generator=generator)
    return embeddings, labels


def test_memory_recorder_catches_dense_matrix():
    embeddings, labels = memory_case()

    with TensorSizeRecorder() as recorder:
        _dense_recall_at_1(embeddings, labels)

    assert recorder.max_shape == (MEMORY_CASE_ITEMS, MEMORY_CASE_ITEMS)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_size_bounds_largest_block(chunk_size):
    embeddings, labels = memory_case()
    bound = chunk_size * MEMORY_CASE_ITEMS
    metrics = {
        "recall_at_k": lambda: recall_at_k(embeddings, labels, ks=(1, 10), chunk_size=chunk_size),
        "map_at_r": lambda: map_at_r(embeddings, labels, chunk_size=chunk_size),
        "knn_accuracy": lambda: knn_accuracy(embeddings, labels, k=50, chunk_size=chunk_size),
        "evaluate_embeddings": lambda: evaluate_embeddings(
            embeddings, labels, labels // 4, ks=(1, 10), knn_k=50, chunk_size=chunk_size
        ),
    }

    for name, compute in metrics.items():
        with TensorSizeRecorder() as recorder:
            compute()

        assert recorder.max_numel <= bound, f"{name} allocated {recorder.max_shape}"
        assert recorder.max_shape == (chunk_size, MEMORY_CASE_ITEMS), name


def test_chunked_matches_dense_recall():
    embeddings, labels = memory_case()

    assert recall_at_k(embeddings, labels, ks=(1,), chunk_size=64)[1] == pytest.approx(
        _dense_recall_at_1(embeddings, labels)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_input_computed_in_float32(dtype):
    embeddings, labels = memory_case()

    with TensorSizeRecorder() as recorder:
        recall_at_k(embeddings.to(dtype), labels, ks=(1,), chunk_size=64)

    assert recorder.matmul_dtypes == {torch.float32}


# ---------------------------------------------------------------------------- input errors


def _labels(n):
    return torch.zeros(n, dtype=torch.int64)


ERROR_CASES = [
    pytest.param(
        lambda: recall_at_k(torch.randn(5), _labels(5)),
        r"\[N, d\].*\(5,\) and labels \(5,\)",
        id="1-D embeddings",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), torch.zeros(5, 1).long()),
        r"\(5, 3\) and labels \(5, 1\)",
        id="2-D labels",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(4)),
        r"same N.*\(5, 3\) and labels \(4,\)",
        id="length mismatch",
    ),
    pytest.param(
        lambda: recall_at_k(torch.empty(0, 3), _labels(0)),
        r"embeddings is empty",
        id="empty",
    ),
    pytest.param(
        lambda: recall_at_k(torch.empty(4, 0), _labels(4)),
        r"embeddings is empty",
        id="zero features",
    ),
    pytest.param(
        lambda: recall_at_k(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]]), _labels(2)),
        r"NaN or inf in 1 of 2 rows, the first at row 1",
        id="NaN",
    ),
    pytest.param(
        lambda: map_at_r(torch.tensor([[float("inf"), 1.0], [1.0, 1.0]]), _labels(2)),
        r"NaN or inf.*row 0",
        id="inf",
    ),
    pytest.param(
        lambda: recall_at_k(torch.ones(3, 2, dtype=torch.int64), _labels(3)),
        r"floating-point dtype, got torch.int64",
        id="integer embeddings",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(3, 2), torch.zeros(3)),
        r"integer class ids, got dtype torch.float32",
        id="float labels",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=(0,)),
        r"positive int, got 0",
        id="K zero",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=(1, -2)),
        r"positive int, got -2",
        id="K negative",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=(1.5,)),
        r"positive int, got 1.5",
        id="K float",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=(True,)),
        r"positive int, got True",
        id="K bool",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=3),
        r"sequence of positive ints, got 3",
        id="ks int",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=()),
        r"ks is empty",
        id="ks empty",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), ks=(1, 5)),
        r"K=5 is larger than the gallery: N=5 .* K <= 4",
        id="K above N-1",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(1, 3), _labels(1), ks=(1,)),
        r"K=1 .* N=1",
        id="single item",
    ),
    pytest.param(
        lambda: recall_at_k(torch.randn(5, 3), _labels(5), chunk_size=0, ks=(1,)),
        r"chunk_size must be an int >= 1, got 0",
        id="chunk_size zero",
    ),
    pytest.param(
        lambda: map_at_r(torch.randn(5, 3), _labels(5), chunk_size=2.0),
        r"chunk_size must be an int >= 1, got 2.0",
        id="chunk_size float",
    ),
    pytest.param(
        lambda: map_at_r(torch.randn(4, 3), torch.arange(4)),
        r"MAP@R is undefined.*R = 0",
        id="MAP@R unique labels",
    ),
    pytest.param(
        lambda: recall_at_k(torch.full((3, 2), 1e20), _labels(3), ks=(1,), normalize=False),
        r"overflow float32.*normalize=True",
        id="dot product overflow",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), k=0),
        r"k must be a positive int, got 0",
        id="kNN k zero",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), k=5),
        r"k=5 is larger than the leave-one-out gallery .* 4 items",
        id="kNN k above N-1",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), torch.randn(3, 3), _labels(3), k=4),
        r"k=4 is larger than the memory bank, which has 3 items",
        id="kNN k above bank",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), k=1, temperature=0),
        r"temperature must be a finite number > 0, got 0",
        id="kNN temperature zero",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), k=1, temperature=float("nan")),
        r"got nan",
        id="kNN temperature nan",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), torch.randn(3, 3), k=1),
        r"bank_labels is missing",
        id="kNN bank without labels",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), bank_labels=_labels(3), k=1),
        r"bank_embeddings is missing",
        id="kNN labels without bank",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), torch.randn(3, 4), _labels(3), k=1),
        r"d=4 features but query_embeddings have d=3",
        id="kNN bank feature size",
    ),
    pytest.param(
        lambda: knn_accuracy(torch.randn(5, 3), _labels(5), torch.randn(3, 3), _labels(2), k=1),
        r"bank_embeddings \(3, 3\) and bank_labels \(2,\)",
        id="kNN bank shapes",
    ),
    pytest.param(
        lambda: evaluate_embeddings(
            torch.randn(5, 3), _labels(5), _labels(5), ks=(1,), knn_bank=torch.randn(3, 3), knn_k=1
        ),
        r"knn_bank must be a pair",
        id="summary bank not a pair",
    ),
    pytest.param(
        lambda: evaluate_embeddings(torch.randn(5, 3), _labels(5), _labels(4), ks=(1,), knn_k=1),
        r"features \(5, 3\) and coarse \(4,\)",
        id="summary coarse shape",
    ),
    pytest.param(
        lambda: evaluate_embeddings(torch.randn(5, 3), _labels(5), _labels(5), ks=(1,)),
        r"k=200 is larger than the leave-one-out gallery",
        id="summary kNN k",
    ),
]


@pytest.mark.parametrize("compute, message", ERROR_CASES)
def test_invalid_input_raises(compute, message):
    with pytest.raises(ValueError, match=message):
        compute()


# ---------------------------------------------------------------------- feature extraction


class TinyModel(torch.nn.Module):
    """A model with the backbone and projector feature methods that records its mode."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6))
        self.projector = torch.nn.Linear(6, 3)
        self.calls = []

    def backbone_features(self, images):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.backbone(images)

    def projector_features(self, images):
        return self.projector(self.backbone_features(images))


def _loader(num_items=10, batch_size=4):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_items, 3, 2, 2, generator=generator)
    coarse = torch.arange(num_items) // 5
    fine = torch.arange(num_items)
    return images, DataLoader(TensorDataset(images, coarse, fine), batch_size=batch_size)


@pytest.mark.parametrize("which", ["backbone", "projector"])
def test_extract_features_collects_in_order(which):
    model = TinyModel()
    images, loader = _loader()

    features, coarse, fine = extract_features(model, loader, which=which)

    expected = getattr(model, f"{which}_features")(images).detach()
    assert features.dtype == torch.float32
    assert features.device.type == "cpu"
    assert torch.allclose(features, expected, atol=1e-6)
    assert coarse.tolist() == [0] * 5 + [1] * 5
    assert fine.tolist() == list(range(10))
    assert coarse.dtype == fine.dtype == torch.int64


@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_extract_features_restores_mode(start_in_train_mode):
    model = TinyModel()
    model.train(start_in_train_mode)
    _, loader = _loader()

    extract_features(model, loader)

    assert model.calls, "the model was never called"
    assert all(call == (False, False) for call in model.calls), "needs eval mode, no gradients"
    assert model.training is start_in_train_mode


def test_extract_features_restores_mode_after_error():
    model = TinyModel()
    model.train()
    loader = [(torch.randn(2, 3, 2, 2), torch.zeros(2), torch.zeros(2)), "not a batch"]

    with pytest.raises(ValueError, match="batch 1 of the loader must be"):
        extract_features(model, loader)

    assert model.training


def test_extract_features_plain_callable_and_bound_method():
    model = TinyModel()
    model.train()
    images, loader = _loader()

    from_function, _, _ = extract_features(lambda x: model.backbone(x) * 2, loader)
    from_method, _, _ = extract_features(model.backbone_features, loader)

    assert torch.allclose(from_function, model.backbone(images).detach() * 2, atol=1e-6)
    assert model.calls[-1] == (False, False), "a bound method's model must be put in eval mode"
    assert model.training
    assert from_method.shape == (10, 6)


def test_extract_features_casts_to_float32():
    _, loader = _loader()

    features, _, _ = extract_features(lambda x: x.flatten(1).to(torch.bfloat16), loader)

    assert features.dtype == torch.float32


EXTRACT_ERROR_CASES = [
    pytest.param(
        lambda: extract_features(TinyModel(), _loader()[1], which="head"),
        ValueError,
        r"'backbone' or 'projector', got 'head'",
        id="unknown which",
    ),
    pytest.param(
        lambda: extract_features(lambda x: x, _loader()[1], which="projector"),
        ValueError,
        r"needs an object with a .projector_features",
        id="projector of plain callable",
    ),
    pytest.param(
        lambda: extract_features(42, _loader()[1]),
        TypeError,
        r"must be a callable",
        id="not callable",
    ),
    pytest.param(
        lambda: extract_features(lambda x: x.flatten(1), [(torch.ones(2, 3), torch.zeros(2))]),
        ValueError,
        r"batch 0 .* \(images, coarse, fine\), got 2 items",
        id="pairs instead of triples",
    ),
    pytest.param(
        lambda: extract_features(lambda x: x, []),
        ValueError,
        r"yielded no batches",
        id="empty loader",
    ),
    pytest.param(
        lambda: extract_features(lambda x: x, _loader()[1]),
        ValueError,
        r"features \[B, d\] with B=4, got \(4, 3, 2, 2\)",
        id="feature maps",
    ),
    pytest.param(
        lambda: extract_features(
            lambda x: x.flatten(1), [(torch.ones(2, 3), torch.zeros(3), torch.zeros(2))]
        ),
        ValueError,
        r"coarse has 3 labels for 2 images",
        id="label count",
    ),
]


@pytest.mark.parametrize("compute, error, message", EXTRACT_ERROR_CASES)
def test_extract_features_invalid_input_raises(compute, error, message):
    with pytest.raises(error, match=message):
        compute()


def test_extract_then_evaluate():
    model = TinyModel()
    _, loader = _loader(num_items=12, batch_size=5)

    features, coarse, fine = extract_features(model, loader)
    result = evaluate_embeddings(features, fine // 3, coarse, ks=(1, 2), knn_k=3)

    assert set(result["recall"]) == {1, 2}
    assert 0.0 <= result["map_at_r"] <= 1.0


def test_docstring_examples_run():
    results = doctest.testmod(evaluate, optionflags=doctest.NORMALIZE_WHITESPACE)

    assert results.attempted > 0
    assert results.failed == 0
