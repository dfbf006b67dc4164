"""The key queue: wrap-around, limits, masks, state round trip and the stale-key warning."""

import pytest
import torch

from maskcon_mini.key_queue import KeyQueue, warn_if_stale_keys


def batch_of(start, count, dim=2):
    keys = torch.arange(start, start + count, dtype=torch.float32)[:, None].repeat(1, dim)
    labels = torch.arange(start, start + count) % 3
    indices = torch.arange(start, start + count)
    return keys, labels, indices


def test_wrap_with_batches_4_4_3():
    queue = KeyQueue(size=8, dim=2)
    for start, count in ((0, 4), (4, 4), (8, 3)):
        queue.enqueue(*batch_of(start, count))
    assert queue.indices.tolist() == [8, 9, 10, 3, 4, 5, 6, 7]
    assert queue.keys[:, 0].tolist() == [8, 9, 10, 3, 4, 5, 6, 7]
    assert queue.labels.tolist() == [i % 3 for i in [8, 9, 10, 3, 4, 5, 6, 7]]
    assert int(queue.pointer) == 3
    assert queue.is_full


def test_unfilled_slots_are_invalid():
    queue = KeyQueue(size=8, dim=2)
    assert queue.num_filled == 0
    queue.enqueue(*batch_of(0, 3))
    assert queue.valid_mask.tolist() == [True] * 3 + [False] * 5
    assert not queue.is_full
    assert queue.indices[3:].tolist() == [-1] * 5


def test_batch_larger_than_queue_rejected():
    queue = KeyQueue(size=4, dim=2)
    with pytest.raises(ValueError, match=r"between 1 and the queue size K=4, got 5"):
        queue.enqueue(*batch_of(0, 5))
    assert queue.num_filled == 0


def test_batch_equal_to_queue_accepted():
    queue = KeyQueue(size=4, dim=2)
    queue.enqueue(*batch_of(0, 4))
    queue.enqueue(*batch_of(4, 4))
    assert queue.indices.tolist() == [4, 5, 6, 7]


def test_wrong_key_dimension_rejected():
    queue = KeyQueue(size=4, dim=3)
    with pytest.raises(ValueError, match=r"keys must be \[B, 3\], got shape \(2, 2\)"):
        queue.enqueue(*batch_of(0, 2, dim=2))


def test_label_count_mismatch_rejected():
    queue = KeyQueue(size=4, dim=2)
    keys, labels, _ = batch_of(0, 2)
    with pytest.raises(ValueError, match=r"labels must be \[B\]=\(2,\), got shape \(3,\)"):
        queue.enqueue(keys, torch.zeros(3, dtype=torch.long))


def test_state_dict_round_trip():
    queue = KeyQueue(size=8, dim=2)
    for start, count in ((0, 4), (4, 3)):
        queue.enqueue(*batch_of(start, count))
    restored = KeyQueue(size=8, dim=2)
    restored.load_state_dict(queue.state_dict())
    for name in ("keys", "labels", "indices", "filled", "pointer"):
        assert torch.equal(getattr(restored, name), getattr(queue, name)), name
    queue.enqueue(*batch_of(7, 2))
    restored.enqueue(*batch_of(7, 2))
    assert torch.equal(restored.keys, queue.keys)


def test_snapshot_is_a_copy():
    queue = KeyQueue(size=4, dim=2)
    queue.enqueue(*batch_of(0, 2))
    keys, _, _, valid = queue.snapshot()
    queue.enqueue(*batch_of(2, 2))
    assert valid.tolist() == [True, True, False, False]
    assert keys[2:].abs().sum() == 0


@pytest.mark.parametrize("size, dim", [(0, 2), (4, 0)])
def test_invalid_queue_size_rejected(size, dim):
    with pytest.raises(ValueError, match="must be >= 1"):
        KeyQueue(size=size, dim=dim)


def test_stale_key_warning_when_queue_near_dataset_size():
    with pytest.warns(UserWarning, match=r"K=8192 .* N=8144"):
        share = warn_if_stale_keys(8192, 8144, 128)
    assert share == 1.0


def test_no_stale_key_warning_for_small_queue(recwarn):
    share = warn_if_stale_keys(4096, 40000, 256)
    assert share == pytest.approx(4096 / 40000)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
