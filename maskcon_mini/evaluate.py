"""Retrieval and kNN evaluation of embeddings: Recall@K, MAP@R and weighted kNN accuracy.

MaskCon trains with coarse labels only and is evaluated on the test set with fine labels.
Every test image is a query, and the rest of the test set is its gallery. Similarity is the
cosine similarity of L2-normalised embeddings, computed in float32 whatever the input dtype.

Each query is excluded from its own gallery by index: its self-similarity is set to -inf
before top-k. The official MaskCon code drops the first of the top K+1 neighbours instead,
which is wrong when another item has the same embedding, because top-k may rank that item
above the query itself.

Queries are processed in chunks of ``chunk_size`` rows. The largest intermediates are one
[chunk_size, N] similarity block and top-k buffers no larger than it, so memory grows with
chunk_size x N. Only a chunk_size of N or more gives an [N, N] block.

Ties: when several gallery items share the similarity at the K-th place, ``torch.topk``
selects among them in an unspecified order. The choice can differ between devices and
between calls that request different numbers of neighbours.

NOTE: the tests run on the CPU only. Every tensor is created on the device of the input
embeddings, so CUDA inputs should work, but no test has run them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "DEFAULT_KS",
    "evaluate_embeddings",
    "extract_features",
    "knn_accuracy",
    "map_at_r",
    "recall_at_k",
]

# The K values of Recall@K in the official MaskCon code (github.com/MrChenFeng/MaskCon_CVPR2023).
DEFAULT_KS = (1, 2, 5, 10, 50, 100)

FEATURE_KINDS = ("backbone", "projector")

_FLOAT32_MAX = torch.finfo(torch.float32).max


# ----------------------------------------------------------------------------- input checks


def _validate_labels(
    labels: Any, embeddings: torch.Tensor, labels_name: str, embeddings_name: str
) -> torch.Tensor:
    """Check that labels are class ids [N] for embeddings [N, d] and return them as int64."""
    labels = torch.as_tensor(labels)
    shapes = (
        f"{embeddings_name} {tuple(embeddings.shape)} and {labels_name} {tuple(labels.shape)}"
    )

    if embeddings.dim() != 2 or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{embeddings_name} must be a 2-D tensor [N, d] and {labels_name} a 1-D tensor [N] "
            f"with the same N, got shapes {shapes}. Flatten feature maps with .flatten(1) "
            f"and labels with .reshape(-1)."
        )

    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(
            f"{embeddings_name} is empty, got shapes {shapes}. Pass at least one item with "
            f"at least one feature."
        )

    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{labels_name} must contain integer class ids, got dtype {labels.dtype}. "
            f"Convert with .long() if the values are whole numbers."
        )

    return labels.to(device=embeddings.device, dtype=torch.int64)


def _validate_embedding_values(embeddings: torch.Tensor, name: str) -> None:
    """Raise ValueError unless the embeddings are floating point and finite."""
    if not embeddings.is_floating_point():
        raise ValueError(
            f"{name} must have a floating-point dtype, got {embeddings.dtype}. "
            f"Convert with .float()."
        )

    finite = torch.isfinite(embeddings)  # [N, d]
    if not bool(finite.all()):
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contain NaN or inf in {bad_rows.numel()} of {embeddings.shape[0]} rows, "
            f"the first at row {int(bad_rows[0])}. Check the model output (for example an fp16 "
            f"overflow) or drop those rows."
        )


def _validate_inputs(
    embeddings: Any, labels: Any, embeddings_name: str, labels_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = torch.as_tensor(embeddings)
    labels = _validate_labels(labels, embeddings, labels_name, embeddings_name)
    _validate_embedding_values(embeddings, embeddings_name)
    return embeddings, labels


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_chunk_size(chunk_size: Any) -> int:
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be an int >= 1, got {chunk_size!r}. It sets how many queries "
            f"share one similarity block, for example 1024."
        )
    return int(chunk_size)


def _validate_ks(ks: Any, num_items: int) -> tuple[int, ...]:
    """Check each K against the gallery size N-1 and return the distinct K values in order."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise ValueError(
            f"ks must be a sequence of positive ints, got {ks!r}. Pass for example ks=(1, 5)."
        )

    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty. Pass at least one K, for example ks=(1,).")

    for k in ks:
        if not _is_int(k) or k < 1:
            raise ValueError(
                f"every K in ks must be a positive int, got {k!r} in ks={ks!r}. "
                f"Pass for example ks=(1, 2, 5, 10)."
            )

    largest = max(ks)
    if largest > num_items - 1:
        raise ValueError(
            f"K={largest} is larger than the gallery: N={num_items} items leave N-1="
            f"{num_items - 1} neighbours for each query. Use K <= {num_items - 1} or more items."
        )

    return tuple(sorted({int(k) for k in ks}))


def _validate_knn_k(k: Any, bank_size: int, bank_description: str) -> int:
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}. The usual value is 200.")

    if k > bank_size:
        raise ValueError(
            f"k={k} is larger than the {bank_description}, which has {bank_size} items. "
            f"Use k <= {bank_size}."
        )

    return int(k)


def _validate_temperature(temperature: Any) -> float:
    if (
        not isinstance(temperature, numbers.Real)
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r}. "
            f"The usual value is 0.1."
        )
    return float(temperature)


# ------------------------------------------------------------------------ neighbour search


def _prepare_embeddings(embeddings: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Return float32 embeddings [N, d], L2-normalised per row if ``normalize``."""
    features = embeddings.to(torch.float32)  # [N, d]

    if normalize:
        # Dividing by the largest absolute value first changes no direction, and it keeps the
        # squared norm inside float32 for rows with entries near the float32 limit. The norm
        # floor of 1e-12 is the eps of F.normalize, so a zero row stays zero.
        scale = torch.linalg.vector_norm(features, ord=math.inf, dim=1, keepdim=True)  # [N, 1]
        scaled = features / scale.clamp_min(torch.finfo(torch.float32).tiny)  # [N, d], a copy
        norms = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # [N, 1]
        return scaled.div_(norms.clamp_min(1e-12))

    norms = torch.linalg.vector_norm(features, dim=1, dtype=torch.float64)  # [N]
    largest_norm = float(norms.max())
    if largest_norm * largest_norm > _FLOAT32_MAX:
        raise ValueError(
            f"with normalize=False the dot products can overflow float32: the largest row norm "
            f"is {largest_norm:.3g}, and its square exceeds {_FLOAT32_MAX:.3g}. Pass "
            f"normalize=True or scale the embeddings down."
        )
    return features


def _nearest_neighbours(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    num_neighbours: int | torch.Tensor,
    chunk_size: int,
    exclude_self: bool,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, similarities, indices)`` of the most similar gallery items, chunk by chunk.

    ``similarities`` and ``indices`` are [c, k] for the queries ``start:start + c``, most similar
    first. ``num_neighbours`` is one k for all queries or a per-query count [Nq], of which each
    chunk takes its maximum. With ``exclude_self`` the queries must be the gallery rows in the
    same order, and each query's own row is masked to -inf before top-k.
    """
    num_queries = queries.shape[0]

    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)

        similarities = queries[start:stop] @ gallery.T  # [c, Ng] float32

        if exclude_self:
            rows = torch.arange(stop - start, device=similarities.device)  # [c]
            similarities[rows, rows + start] = float("-inf")

        if isinstance(num_neighbours, torch.Tensor):
            k = int(num_neighbours[start:stop].max())
        else:
            k = num_neighbours

        top_similarities, top_indices = similarities.topk(k, dim=1)  # [c, k] each

        # Freeing the block before the next matmul keeps one block alive at a time, not two.
        del similarities
        yield start, top_similarities, top_indices


# ------------------------------------------------------------------- per-chunk statistics


def _count_recall_hits(
    neighbour_labels: torch.Tensor, query_labels: torch.Tensor, ks: tuple[int, ...]
) -> torch.Tensor:
    """Count, for each K, the queries with a same-label item among their first K neighbours.

    ``neighbour_labels`` is [c, k] with k >= max(ks), and ``query_labels`` is [c].
    Returns int64 counts [len(ks)].
    """
    matches = neighbour_labels == query_labels[:, None]  # [c, k]
    counts = [matches[:, :k].any(dim=1).sum() for k in ks]
    return torch.stack(counts).cpu()


def _count_same_label_others(labels: torch.Tensor) -> torch.Tensor:
    """Return R for each item: the number of other items with its label, int64 [N]."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] - 1


def _average_precision_at_r(
    neighbour_labels: torch.Tensor, query_labels: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """Compute AP@R = (1/R) * sum_{i<=R} P(i) * rel(i) for each query, float64 [c].

    ``neighbour_labels`` is [c, k] with k >= max(r). Queries with R = 0 get 0, and the caller
    leaves them out of the mean.
    """
    num_columns = neighbour_labels.shape[1]
    ranks = torch.arange(1, num_columns + 1, device=r.device, dtype=torch.float64)  # [k]

    # Only the first R ranks of each query count.
    within_r = ranks[None, :] <= r[:, None]  # [c, k]
    relevant = (neighbour_labels == query_labels[:, None]) & within_r  # [c, k]

    precision = relevant.cumsum(dim=1, dtype=torch.float64) / ranks  # P(i) [c, k]
    return (precision * relevant).sum(dim=1) / r.clamp(min=1)


def _weighted_knn_predictions(
    similarities: torch.Tensor,
    neighbour_classes: torch.Tensor,
    num_classes: int,
    temperature: float,
) -> torch.Tensor:
    """Predict a class per query by the weighted vote sum_j exp(s_j / tau), int64 [c].

    ``similarities`` [c, k] must be sorted in descending order, and ``neighbour_classes`` [c, k]
    contains class ids in [0, num_classes).
    """
    # Subtracting each row's top similarity scales the row's votes by one factor, which leaves
    # the argmax unchanged and keeps exp from overflowing at small temperatures.
    weights = torch.exp((similarities - similarities[:, :1]) / temperature)  # [c, k]

    scores = torch.zeros(
        similarities.shape[0], num_classes, dtype=weights.dtype, device=weights.device
    )  # [c, C]
    scores.scatter_add_(1, neighbour_classes, weights)

    # argmax returns the first maximum, so a tie between classes goes to the smallest label.
    return scores.argmax(dim=1)


def _to_class_ids(*label_sets: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Map the labels of all sets to shared class ids 0..C-1 and return C and the mapped sets."""
    all_labels = torch.cat(label_sets)
    classes, inverse = torch.unique(all_labels, return_inverse=True)
    return classes.numel(), list(inverse.split([labels.numel() for labels in label_sets]))


# -------------------------------------------------------------------------------- metrics


def recall_at_k(
    embeddings: Any,
    labels: Any,
    ks: Iterable[int] = (1, 2, 5, 10),
    chunk_size: int = 1024,
    normalize: bool = True,
) -> dict[int, float]:
    """Compute Recall@K: the fraction of queries with a same-label item among their K nearest.

    Every item is a query, and all other items form its gallery. The query itself is excluded
    by index, so an identical copy of it with another label still counts as a miss. Similarity
    is cosine (or the dot product with ``normalize=False``), computed in float32 in chunks of
    ``chunk_size`` queries. A tie at the K-th place is broken by ``torch.topk`` in an
    unspecified order.

    Args:
        embeddings: embeddings [N, d], any floating dtype (fp16 and bf16 are cast to float32).
        labels: integer class ids [N], for example fine labels.
        ks: the K values, each in 1..N-1. Duplicates are merged.
        chunk_size: number of queries per similarity block. Peak memory grows with
            chunk_size x N.
        normalize: L2-normalise the rows first (cosine similarity). A zero row stays zero and
            has similarity 0 with every item.

    Returns:
        {K: Recall@K} with int keys in ascending order of K and float values in [0, 1].
        ``json.dumps`` turns the keys into strings.

    Raises:
        ValueError: for shapes other than [N, d] and [N], empty or non-finite embeddings,
            non-integer labels, a K that is not a positive int or exceeds N-1, or
            chunk_size < 1.

    Examples:
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        >>> labels = torch.tensor([0, 0, 1, 0])
        >>> recall_at_k(embeddings, labels, ks=(1, 2))
        {1: 0.5, 2: 0.75}
    """
    embeddings, labels = _validate_inputs(embeddings, labels, "embeddings", "labels")
    chunk_size = _validate_chunk_size(chunk_size)
    num_items = embeddings.shape[0]
    ks = _validate_ks(ks, num_items)

    features = _prepare_embeddings(embeddings, normalize)  # [N, d] float32

    hits = torch.zeros(len(ks), dtype=torch.int64)  # [len(ks)]
    for start, _, indices in _nearest_neighbours(features, features, ks[-1], chunk_size, True):
        query_labels = labels[start : start + indices.shape[0]]  # [c]
        hits += _count_recall_hits(labels[indices], query_labels, ks)

    return {k: int(count) / num_items for k, count in zip(ks, hits)}


def map_at_r(
    embeddings: Any,
    labels: Any,
    chunk_size: int = 1024,
    normalize: bool = True,
) -> float:
    """Compute MAP@R (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020).

    For a query with R other items of its label, AP@R = (1/R) * sum_{i=1..R} P(i) * rel(i),
    where rel(i) is 1 if the i-th nearest neighbour has the query's label and P(i) is the
    precision among the first i neighbours. MAP@R is the mean of AP@R over the queries with
    R >= 1. A query whose label occurs only once has R = 0, so it is left out of both the sum
    and the count. The query itself is excluded from its gallery by index. Ties among
    neighbours are ordered by ``torch.topk`` in an unspecified order, which can change the
    result.

    Args:
        embeddings: embeddings [N, d], any floating dtype (computed in float32).
        labels: integer class ids [N].
        chunk_size: number of queries per similarity block. Peak memory grows with
            chunk_size x N.
        normalize: L2-normalise the rows first (cosine similarity).

    Returns:
        MAP@R in [0, 1].

    Raises:
        ValueError: for invalid shapes, dtypes or values as in ``recall_at_k``, or when every
            label occurs once, because then no query has R >= 1.

    Examples:
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        >>> map_at_r(embeddings, torch.tensor([0, 0, 1, 1]))
        1.0
    """
    embeddings, labels = _validate_inputs(embeddings, labels, "embeddings", "labels")
    chunk_size = _validate_chunk_size(chunk_size)

    r = _count_same_label_others(labels)  # [N]
    num_scored = int((r > 0).sum())
    if num_scored == 0:
        raise ValueError(
            f"MAP@R is undefined because each of the {labels.numel()} labels occurs once, so "
            f"no query has another item of its label (R = 0). Pass labels with repeated classes."
        )

    features = _prepare_embeddings(embeddings, normalize)  # [N, d] float32

    total = 0.0
    for start, _, indices in _nearest_neighbours(features, features, r, chunk_size, True):
        stop = start + indices.shape[0]
        chunk_r = r[start:stop]  # [c]
        precision = _average_precision_at_r(labels[indices], labels[start:stop], chunk_r)
        total += float(precision[chunk_r > 0].sum())

    return total / num_scored


def knn_accuracy(
    query_embeddings: Any,
    query_labels: Any,
    bank_embeddings: Any = None,
    bank_labels: Any = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Compute the accuracy of weighted kNN classification (Wu et al., InstDisc, CVPR 2018).

    Each query takes its k most cosine-similar bank items, and each of them votes for its label
    with weight exp(similarity / temperature). The query is predicted as the label with the
    largest total vote, and a tie between labels goes to the smallest label. With a memory bank
    (for example train features and train labels), the queries are classified against it.
    Without one, each query is classified against the other queries (leave-one-out), and its
    own vote is excluded by index.

    Args:
        query_embeddings: query embeddings [Nq, d], any floating dtype (computed in float32).
        query_labels: integer class ids [Nq].
        bank_embeddings: memory-bank embeddings [Nb, d], or None for leave-one-out.
        bank_labels: integer class ids [Nb], given exactly when ``bank_embeddings`` is.
        k: number of neighbours that vote, at most Nb (or Nq - 1 for leave-one-out).
        temperature: tau in exp(similarity / tau), finite and > 0.
        chunk_size: number of queries per similarity block. Peak memory grows with
            chunk_size x Nb.

    Returns:
        Fraction of queries whose predicted label equals their label, in [0, 1]. A query label
        that no bank item has always counts as wrong.

    Raises:
        ValueError: for invalid shapes, dtypes or values as in ``recall_at_k``, a bank given
            without its labels (or the reverse), a feature size d that differs between queries
            and bank, k outside 1..bank size, or a temperature that is not finite and > 0.

    Examples:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> queries = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
        >>> knn_accuracy(queries, torch.tensor([0, 1, 1]), bank, torch.tensor([0, 1]), k=1)
        0.6666666666666666
    """
    queries, query_labels = _validate_inputs(
        query_embeddings, query_labels, "query_embeddings", "query_labels"
    )
    chunk_size = _validate_chunk_size(chunk_size)
    temperature = _validate_temperature(temperature)

    leave_one_out = bank_embeddings is None and bank_labels is None
    if leave_one_out:
        bank, bank_labels = queries, query_labels
        k = _validate_knn_k(k, queries.shape[0] - 1, "leave-one-out gallery (N-1 other queries)")
    else:
        bank, bank_labels = _validate_bank(bank_embeddings, bank_labels, queries)
        k = _validate_knn_k(k, bank.shape[0], "memory bank")

    if leave_one_out:
        num_classes, (query_classes,) = _to_class_ids(query_labels)
        bank_classes = query_classes
    else:
        num_classes, (query_classes, bank_classes) = _to_class_ids(query_labels, bank_labels)

    query_features = _prepare_embeddings(queries, normalize=True)  # [Nq, d] float32
    bank_features = query_features if leave_one_out else _prepare_embeddings(bank, True)

    correct = 0
    for start, similarities, indices in _nearest_neighbours(
        query_features, bank_features, k, chunk_size, exclude_self=leave_one_out
    ):
        predictions = _weighted_knn_predictions(
            similarities, bank_classes[indices], num_classes, temperature
        )  # [c]
        correct += int((predictions == query_classes[start : start + len(predictions)]).sum())

    return correct / queries.shape[0]


def _validate_bank(
    bank_embeddings: Any, bank_labels: Any, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if bank_embeddings is None or bank_labels is None:
        missing = "bank_labels" if bank_labels is None else "bank_embeddings"
        raise ValueError(
            f"{missing} is missing. Pass both bank_embeddings and bank_labels for a memory "
            f"bank, or neither for leave-one-out on the queries."
        )

    bank, bank_labels = _validate_inputs(
        bank_embeddings, bank_labels, "bank_embeddings", "bank_labels"
    )

    if bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank_embeddings have d={bank.shape[1]} features but query_embeddings have "
            f"d={queries.shape[1]}, got shapes {tuple(bank.shape)} and {tuple(queries.shape)}. "
            f"Extract both with the same model and layer."
        )

    return bank.to(queries.device), bank_labels.to(queries.device)


def evaluate_embeddings(
    features: Any,
    fine: Any,
    coarse: Any,
    ks: Iterable[int] = DEFAULT_KS,
    knn_bank: tuple[Any, Any] | None = None,
    *,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Compute the MaskCon test metrics of one embedding set in a single pass over the queries.

    Recall@K, MAP@R and kNN accuracy use the fine labels, and R@1 is also reported on the
    coarse labels. Without ``knn_bank``, kNN accuracy is leave-one-out on ``features`` and
    shares the neighbour search with the other metrics. With a bank, it takes one more pass.
    Each metric matches its single-metric function, except where a tie at a cut-off is broken
    differently (see the module docstring).

    Args:
        features: test embeddings [N, d], any floating dtype (computed in float32).
        fine: fine class ids [N].
        coarse: coarse class ids [N].
        ks: the K values of Recall@K, each in 1..N-1, so the default needs N >= 101.
        knn_bank: optional ``(bank_embeddings [Nb, d], bank_fine_labels [Nb])``, for example
            the train features, for kNN accuracy against a memory bank.
        knn_k: number of neighbours that vote in kNN classification, at most Nb with a bank
            and N-1 without one.
        knn_temperature: tau of the kNN vote weights exp(similarity / tau).
        chunk_size: number of queries per similarity block.

    Returns:
        A JSON-friendly dict ``{"recall": {K: float}, "map_at_r": float, "knn_accuracy": float,
        "coarse_recall_at_1": float}``. The Recall@K keys are ints, which ``json.dumps`` writes
        as strings.

    Raises:
        ValueError: for any invalid input that the single-metric functions reject, or a
            ``knn_bank`` that is not a pair.

    Examples:
        >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        >>> metrics = evaluate_embeddings(
        ...     features, fine=torch.tensor([0, 0, 1, 1]), coarse=torch.tensor([0, 0, 0, 0]),
        ...     ks=(1, 2), knn_k=1)
        >>> metrics["recall"], metrics["map_at_r"], metrics["knn_accuracy"]
        ({1: 1.0, 2: 1.0}, 1.0, 1.0)
    """
    features, fine = _validate_inputs(features, fine, "features", "fine")
    coarse = _validate_labels(coarse, features, "coarse", "features")
    chunk_size = _validate_chunk_size(chunk_size)
    num_items = features.shape[0]
    ks = _validate_ks(ks, num_items)

    knn_temperature = _validate_temperature(knn_temperature)

    # The kNN inputs are checked before the neighbour search, so that a bad bank fails fast.
    leave_one_out = knn_bank is None
    if leave_one_out:
        knn_k = _validate_knn_k(knn_k, num_items - 1, "leave-one-out gallery (N-1 other items)")
    else:
        if not isinstance(knn_bank, (tuple, list)) or len(knn_bank) != 2:
            raise ValueError(
                f"knn_bank must be a pair (bank_embeddings [Nb, d], bank_labels [Nb]), got "
                f"{type(knn_bank).__name__}. Pass None for leave-one-out kNN on the features."
            )
        bank, bank_labels = _validate_bank(knn_bank[0], knn_bank[1], features)
        knn_k = _validate_knn_k(knn_k, bank.shape[0], "memory bank")

    r = _count_same_label_others(fine)  # [N]
    num_scored = int((r > 0).sum())
    if num_scored == 0:
        raise ValueError(
            f"MAP@R is undefined because each of the {num_items} fine labels occurs once "
            f"(R = 0 for every query). Pass fine labels with repeated classes."
        )

    num_classes, (fine_classes,) = _to_class_ids(fine)
    prepared = _prepare_embeddings(features, normalize=True)  # [N, d] float32

    # Each chunk takes enough neighbours for the largest K, for every query's R and, in
    # leave-one-out mode, for the kNN vote.
    min_neighbours = max(ks[-1], knn_k) if leave_one_out else ks[-1]
    num_neighbours = r.clamp(min=min_neighbours)  # [N]

    recall_hits = torch.zeros(len(ks), dtype=torch.int64)
    coarse_hits = torch.zeros(1, dtype=torch.int64)
    precision_total = 0.0
    knn_correct = 0

    for start, similarities, indices in _nearest_neighbours(
        prepared, prepared, num_neighbours, chunk_size, exclude_self=True
    ):
        stop = start + indices.shape[0]
        neighbour_fine = fine[indices]  # [c, k]
        query_fine = fine[start:stop]  # [c]

        recall_hits += _count_recall_hits(neighbour_fine, query_fine, ks)
        coarse_hits += _count_recall_hits(coarse[indices[:, :1]], coarse[start:stop], (1,))

        chunk_r = r[start:stop]  # [c]
        precision = _average_precision_at_r(neighbour_fine, query_fine, chunk_r)
        precision_total += float(precision[chunk_r > 0].sum())

        if leave_one_out:
            predictions = _weighted_knn_predictions(
                similarities[:, :knn_k], fine_classes[indices[:, :knn_k]], num_classes,
                knn_temperature,
            )  # [c]
            knn_correct += int((predictions == fine_classes[start:stop]).sum())

    if leave_one_out:
        knn = knn_correct / num_items
    else:
        knn = knn_accuracy(
            features, fine, bank, bank_labels, k=knn_k,
            temperature=knn_temperature, chunk_size=chunk_size,
        )

    return {
        "recall": {k: int(count) / num_items for k, count in zip(ks, recall_hits)},
        "map_at_r": precision_total / num_scored,
        "knn_accuracy": knn,
        "coarse_recall_at_1": int(coarse_hits[0]) / num_items,
    }


# ---------------------------------------------------------------------- feature extraction


def _select_feature_function(model_or_fn: Any, which: str) -> Callable[[torch.Tensor], Any]:
    if which not in FEATURE_KINDS:
        raise ValueError(f"which must be 'backbone' or 'projector', got {which!r}.")

    method_name = f"{which}_features"
    method = getattr(model_or_fn, method_name, None)
    if callable(method):
        return method

    if hasattr(model_or_fn, "backbone_features") or hasattr(model_or_fn, "projector_features"):
        raise ValueError(
            f"which={which!r} needs a callable .{method_name}(images) method, which "
            f"{type(model_or_fn).__name__} lacks."
        )

    if which != "backbone":
        raise ValueError(
            f"which={which!r} needs an object with a .{method_name}(images) method, got the "
            f"plain callable {model_or_fn!r}. Pass the model, or use which='backbone'."
        )

    if not callable(model_or_fn):
        raise TypeError(
            f"model_or_fn must be a callable images -> features or an object with "
            f".backbone_features and .projector_features methods, got "
            f"{type(model_or_fn).__name__}."
        )

    return model_or_fn


def _find_mode_owner(model_or_fn: Any) -> Any | None:
    """Return the object to switch with .eval()/.train(): the model or a bound method's owner."""
    for candidate in (model_or_fn, getattr(model_or_fn, "__self__", None)):
        if candidate is not None and callable(getattr(candidate, "eval", None)):
            return candidate
    return None


def _unpack_batch(batch: Any, batch_index: int) -> tuple[Any, Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        if isinstance(batch, (tuple, list)):
            description = f"{len(batch)} items"
        else:
            description = type(batch).__name__
        raise ValueError(
            f"batch {batch_index} of the loader must be (images, coarse, fine), got "
            f"{description}. Wrap the dataset so that it returns coarse and fine labels."
        )
    return batch[0], batch[1], batch[2]


def _flatten_labels(labels: Any, batch_size: int, name: str, batch_index: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).reshape(-1)  # [B]
    if labels.numel() != batch_size:
        raise ValueError(
            f"batch {batch_index}: {name} has {labels.numel()} labels for {batch_size} images."
        )
    return labels.to("cpu", torch.int64)


def _check_feature_batch(features: Any, batch_size: int, batch_index: int) -> torch.Tensor:
    is_tensor = isinstance(features, torch.Tensor)
    if not is_tensor or features.dim() != 2 or features.shape[0] != batch_size:
        shape = tuple(features.shape) if is_tensor else type(features).__name__
        raise ValueError(
            f"batch {batch_index}: the model must return features [B, d] with B={batch_size}, "
            f"got {shape}. Flatten feature maps with .flatten(1) inside the callable."
        )
    return features.detach().to("cpu", torch.float32)


def _collect_features(
    feature_fn: Callable[[torch.Tensor], Any], loader: Iterable, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feature_batches, coarse_batches, fine_batches = [], [], []

    for batch_index, batch in enumerate(loader):
        images, coarse, fine = _unpack_batch(batch, batch_index)
        batch_size = len(images)

        features = feature_fn(images.to(device))
        feature_batches.append(_check_feature_batch(features, batch_size, batch_index))
        coarse_batches.append(_flatten_labels(coarse, batch_size, "coarse", batch_index))
        fine_batches.append(_flatten_labels(fine, batch_size, "fine", batch_index))

    if not feature_batches:
        raise ValueError("the loader yielded no batches. Check the dataset length and the sampler.")

    return torch.cat(feature_batches), torch.cat(coarse_batches), torch.cat(fine_batches)


def extract_features(
    model_or_fn: Any,
    loader: Iterable,
    device: str | torch.device = "cpu",
    which: str = "backbone",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a model over a loader of ``(images, coarse, fine)`` batches and collect the features.

    ``model_or_fn`` is either a callable images -> features [B, d], or an object with
    ``.backbone_features(images)`` and ``.projector_features(images)``, chosen by ``which``.
    The forward passes run under ``torch.no_grad()``. If the object (or the owner of a bound
    method) has ``.eval()``, it is put in eval mode and afterwards returned to the mode its
    ``.training`` flag had, even when a batch raises. An object without ``.training`` stays in
    eval mode. A plain function runs as it is.

    Args:
        model_or_fn: the model or feature function.
        loader: an iterable of ``(images [B, ...], coarse [B], fine [B])``, such as a DataLoader.
        device: device the images are moved to before the forward pass.
        which: ``"backbone"`` or ``"projector"``. A plain callable allows only ``"backbone"``.

    Returns:
        ``(features [N, d] float32, coarse [N] int64, fine [N] int64)``, all on the CPU, in
        loader order.

    Raises:
        ValueError: for an unknown ``which``, a batch that is not a triple, labels whose count
            differs from the batch size, features that are not [B, d], or an empty loader.
        TypeError: if ``model_or_fn`` is neither callable nor has the feature methods.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> images = torch.randn(6, 3, 4, 4)
        >>> dataset = TensorDataset(images, torch.zeros(6).long(), torch.arange(6))
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8))
        >>> features, coarse, fine = extract_features(model, DataLoader(dataset, batch_size=4))
        >>> features.shape, coarse.shape, fine.tolist()
        (torch.Size([6, 8]), torch.Size([6]), [0, 1, 2, 3, 4, 5])
    """
    feature_fn = _select_feature_function(model_or_fn, which)
    mode_owner = _find_mode_owner(model_or_fn)
    was_training = getattr(mode_owner, "training", None)

    if mode_owner is not None:
        mode_owner.eval()

    try:
        with torch.no_grad():
            return _collect_features(feature_fn, loader, device)
    finally:
        if isinstance(was_training, bool) and callable(getattr(mode_owner, "train", None)):
            mode_owner.train(was_training)
