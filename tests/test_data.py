"""Tests of maskcon_mini.data on real CIFAR images and on small image folders written here."""

import io
import json
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100

from maskcon_mini.data import (
    DATASET_NAMES,
    ChecksumError,
    EmptyClassFolderError,
    HierarchicalDataset,
    HierarchyError,
    ImageReadError,
    MappingFileError,
    TwoViewDataset,
    balanced_subset_indices,
    build_dataset,
    build_transforms,
    dataset_stats,
    fine_to_coarse_from_labels,
    resolve_data_root,
)

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TOY_GROUPS = {
    "good": ({"airplane", "automobile", "ship", "truck"}, {"bird", "cat", "dog", "horse"}),
    "bad": ({"airplane", "automobile", "dog", "cat"}, {"ship", "truck", "bird", "horse"}),
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def cifartoy(cifar10_root):
    """Load CIFARtoy splits from the real tree once per module; callers must not modify them."""

    @lru_cache(maxsize=None)
    def load(variant: str, split: str) -> HierarchicalDataset:
        return build_dataset(f"cifartoy_{variant}", root=cifar10_root, split=split)

    return load


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), value: int = 100) -> Path:
    """Write a constant-colour image file; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        color = (value, value // 2, 255 - value)
    elif mode == "RGBA":
        color = (value, value // 2, 255 - value, 7)
    elif mode == "P":
        color = 3
    else:
        color = value
    image = Image.new(mode, size, color)
    if mode == "P":
        image.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    image.save(path)
    return path


def write_nested_tree(root: Path, classes: dict[str, list[str]], images_per_class: int = 3) -> Path:
    """Write ``root/<coarse>/<fine>/<k>.png`` for every class."""
    for coarse, fines in classes.items():
        for fine in fines:
            for k in range(images_per_class):
                write_image(root / coarse / fine / f"{k}.png", value=10 * k)
    return root


def write_flat_tree(root: Path, fines: list[str], images_per_class: int = 2) -> Path:
    """Write ``root/<fine>/<k>.png`` for every fine class."""
    for fine in fines:
        for k in range(images_per_class):
            write_image(root / fine / f"{k}.png", value=20 * k)
    return root


def fine_names_of(dataset) -> list[str]:
    return [dataset.fine_classes[label] for label in dataset.fine_targets.tolist()]


def write_cifar10_archive(shared_data: Path, root: Path, count: int = 500) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write a torchvision-format CIFAR-10 archive from the bit-exact official images.

    The train batches contain official train[0:count] split into five files, and the test
    batch contains test[0:200]. Returns the data root and the train images and labels written.
    """
    exact = np.load(shared_data / "cifar10" / "cifar10_exact_subset.npz")
    images, labels = exact["train_x"][:count], exact["train_y"][:count]
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
        entry = {"data": np.ascontiguousarray(rows), "labels": [int(v) for v in y], "batch_label": name}
        with open(folder / name, "wb") as file:
            pickle.dump(entry, file, protocol=2)

    for batch, chunk in enumerate(np.array_split(np.arange(count), 5), start=1):
        dump(f"data_batch_{batch}", images[chunk], labels[chunk])
    dump("test_batch", exact["test_x"][:200], exact["test_y"][:200])
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": list(CIFAR10_NAMES)}, file, protocol=2)
    return root, images, labels


# --------------------------------------------------------------------------- names and roots


def test_dataset_names_constant():
    assert DATASET_NAMES == ("cifar100", "cifartoy_good", "cifartoy_bad", "imagefolder")


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MASKCON_DATA_ROOT", raising=False)
    assert resolve_data_root() == Path("data")

    monkeypatch.setenv("MASKCON_DATA_ROOT", str(tmp_path / "from_env"))
    assert resolve_data_root() == tmp_path / "from_env"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_unknown_dataset_name_lists_allowed(tmp_path):
    with pytest.raises(ValueError) as caught:
        build_dataset("cifar10", root=tmp_path)
    message = str(caught.value)
    assert "'cifar10'" in message
    for name in DATASET_NAMES:
        assert repr(name) in message


def test_unknown_split_lists_allowed(tmp_path):
    with pytest.raises(ValueError) as caught:
        build_dataset("cifar100", root=tmp_path, split="val")
    message = str(caught.value)
    assert "'val'" in message
    assert "'train'" in message
    assert "'test'" in message


@pytest.mark.parametrize("subset", [0, -3, 1.5, 0.0, True, "10", [5]])
def test_invalid_subset_rejected(subset, tmp_path):
    with pytest.raises(ValueError) as caught:
        build_dataset("cifar100", root=tmp_path, subset=subset)
    assert repr(subset) in str(caught.value) or str(subset) in str(caught.value)


def test_option_for_wrong_dataset_rejected(tmp_path):
    with pytest.raises(ValueError, match="mapping_file applies only to 'imagefolder'"):
        build_dataset("cifartoy_good", root=tmp_path, mapping_file=tmp_path / "map.json")
    with pytest.raises(ValueError, match="download=True is not available for 'imagefolder'"):
        build_dataset("imagefolder", root=tmp_path, download=True)
    with pytest.raises(ValueError, match="needs in_memory=True"):
        build_dataset("imagefolder", root=tmp_path, in_memory_size=16)


# --------------------------------------------------------------------------- CIFARtoy from the real tree


@pytest.mark.parametrize("variant", ["good", "bad"])
@pytest.mark.parametrize("split, per_class", [("train", 5000), ("test", 1000)])
def test_cifartoy_counts(cifartoy, variant, split, per_class):
    dataset = cifartoy(variant, split)

    assert len(dataset) == 8 * per_class
    assert torch.bincount(dataset.fine_targets, minlength=8).tolist() == [per_class] * 8
    assert torch.bincount(dataset.coarse_targets, minlength=2).tolist() == [4 * per_class] * 2
    assert len(dataset.coarse_targets) == len(dataset)
    assert dataset.fine_targets.dtype == torch.int64
    assert dataset.coarse_targets.dtype == torch.int64


@pytest.mark.parametrize("variant", ["good", "bad"])
def test_cifartoy_coarse_groups(cifartoy, variant):
    dataset = cifartoy(variant, "test")
    groups = [
        {fine for fine, coarse in zip(dataset.fine_classes, dataset.fine_to_coarse) if coarse == c} for c in (0, 1)
    ]

    assert groups[0] == TOY_GROUPS[variant][0]
    assert groups[1] == TOY_GROUPS[variant][1]
    assert len(dataset.coarse_classes) == 2
    assert "deer" not in dataset.fine_classes
    assert "frog" not in dataset.fine_classes
    expected_coarse = torch.tensor(dataset.fine_to_coarse)[dataset.fine_targets]
    assert torch.equal(dataset.coarse_targets, expected_coarse)


def test_cifartoy_good_labels_follow_official_code(cifartoy):
    dataset = cifartoy("good", "test")

    assert dataset.fine_classes == ["airplane", "automobile", "ship", "truck", "bird", "cat", "dog", "horse"]
    assert dataset.coarse_classes == ["vehicle", "animal"]


def test_cifartoy_train_order_matches_official(cifartoy, shared_data):
    dataset = cifartoy("good", "train")
    labels = np.load(shared_data / "cifar10" / "cifar10_train_jpeg.npz")["labels"]

    # Official train[0] is a frog, so the first sample is official train[1], a truck.
    assert CIFAR10_NAMES[labels[0]] == "frog"
    assert dataset.paths[0].name == "00001.jpg"
    assert dataset.fine_classes[dataset.fine_targets[0]] == "truck"
    assert dataset.coarse_classes[dataset.coarse_targets[0]] == "vehicle"

    toy_names = [CIFAR10_NAMES[label] for label in labels if CIFAR10_NAMES[label] not in ("deer", "frog")]
    assert fine_names_of(dataset) == toy_names


def test_cifartoy_test_labels_match_official(cifartoy, shared_data):
    dataset = cifartoy("bad", "test")
    archive = np.load(shared_data / "cifar10" / "cifar10_test_jpeg.npz")
    official = {int(index): CIFAR10_NAMES[label] for index, label in zip(archive["official_index"], archive["labels"]) if index >= 0}

    known = [(int(path.stem), name) for path, name in zip(dataset.paths, fine_names_of(dataset)) if int(path.stem) < 1000]
    assert len(known) == sum(1 for name in official.values() if name not in ("deer", "frog"))
    for index, name in known:
        assert official[index] == name
    # Official test[0] is a cat, test[1] and test[2] are ships, test[3] is an airplane.
    assert [name for _, name in known[:4]] == ["cat", "ship", "ship", "airplane"]


def test_cifartoy_pixels_match_stored_jpeg(cifartoy, shared_data):
    dataset = cifartoy("good", "train")
    archive = np.load(shared_data / "cifar10" / "cifar10_train_jpeg.npz")
    jpeg, offsets = archive["jpeg"], archive["offsets"]

    for position in (0, 1, 12345, len(dataset) - 1):
        index = int(dataset.paths[position].stem)
        stored = Image.open(io.BytesIO(jpeg[offsets[index]:offsets[index + 1]].tobytes())).convert("RGB")
        image, _, _ = dataset[position]
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(stored))


def test_cifartoy_in_memory_equals_disk(cifar10_root):
    on_disk = build_dataset("cifartoy_good", root=cifar10_root, subset=25, seed=3)
    in_memory = build_dataset("cifartoy_good", root=cifar10_root, subset=25, seed=3, in_memory=True)

    assert in_memory.in_memory
    assert not on_disk.in_memory
    assert in_memory.pixels.shape == (200, 32, 32, 3)
    assert in_memory.pixels.dtype == torch.uint8
    assert torch.equal(in_memory.fine_targets, on_disk.fine_targets)
    assert torch.equal(in_memory.coarse_targets, on_disk.coarse_targets)
    for i in range(len(on_disk)):
        assert np.array_equal(np.asarray(in_memory[i][0]), np.asarray(on_disk[i][0]))


def test_cifartoy_missing_split_folder(tmp_path):
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("cifartoy_good", root=tmp_path, split="test")
    message = str(caught.value)
    assert str(tmp_path / "cifar10" / "test") in message
    assert "download=True" in message
    assert "data_root" in message


def test_cifartoy_missing_class_folder(tmp_path):
    write_image(tmp_path / "cifar10" / "train" / "airplane" / "00000.jpg")
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("cifartoy_good", root=tmp_path)
    assert str(tmp_path / "cifar10" / "train" / "automobile") in str(caught.value)


def test_cifartoy_empty_class_folder(tmp_path):
    for name in CIFAR10_NAMES:
        write_image(tmp_path / "cifar10" / "train" / name / "00000.jpg")
    (tmp_path / "cifar10" / "train" / "ship" / "00000.jpg").unlink()

    with pytest.raises(EmptyClassFolderError) as caught:
        build_dataset("cifartoy_good", root=tmp_path)
    assert str(tmp_path / "cifar10" / "train" / "ship") in str(caught.value)


# --------------------------------------------------------------------------- CIFARtoy from torchvision's archive


def test_cifartoy_from_archive_matches_tree(shared_data, cifartoy, tmp_path, skip_checksum_of):
    root, images, labels = write_cifar10_archive(shared_data, tmp_path)
    skip_checksum_of({name for name, _ in CIFAR10.train_list + CIFAR10.test_list} | {"batches.meta"})

    dataset = build_dataset("cifartoy_bad", root=root)
    keep = np.array([CIFAR10_NAMES[label] not in ("deer", "frog") for label in labels])

    assert len(dataset) == int(keep.sum())
    assert dataset.paths is None
    assert torch.equal(dataset.pixels, torch.from_numpy(images[keep]))
    assert fine_names_of(dataset) == [CIFAR10_NAMES[label] for label in labels[keep]]
    tree = cifartoy("bad", "train")
    assert torch.equal(dataset.fine_targets, tree.fine_targets[: len(dataset)])
    assert torch.equal(dataset.coarse_targets, tree.coarse_targets[: len(dataset)])


def test_cifartoy_archive_checksum_error(shared_data, tmp_path):
    root, _, _ = write_cifar10_archive(shared_data, tmp_path)
    with pytest.raises(ChecksumError) as caught:
        build_dataset("cifartoy_good", root=root)
    message = str(caught.value)
    assert str(root / CIFAR10.base_folder / "data_batch_1") in message
    assert "download=True" in message


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_real_images_and_labels(cifar100_root, shared_data):
    reference = np.load(shared_data / "cifar100" / "cifar100_test_first20_exact.npz")
    dataset = build_dataset("cifar100", root=cifar100_root, split="test")

    assert len(dataset) == 20
    assert dataset.fine_targets.tolist() == reference["fine_labels"].tolist()
    assert dataset.coarse_targets.tolist() == reference["coarse_labels"].tolist()
    assert dataset.fine_classes == [str(name) for name in reference["fine_label_names"]]
    assert dataset.coarse_classes == [str(name) for name in reference["coarse_label_names"]]
    assert len(dataset.fine_classes) == 100
    assert len(dataset.coarse_classes) == 20
    assert dataset.fine_classes[dataset.fine_targets[0]] == "mountain"
    for i in range(20):
        image, coarse, fine = dataset[i]
        assert np.array_equal(np.asarray(image), reference["x"][i])
        assert coarse == int(reference["coarse_labels"][i])
        assert fine == int(reference["fine_labels"][i])


def test_cifar100_table_agrees_with_labels_file(cifar100_root, shared_data):
    reference = np.load(shared_data / "cifar100" / "cifar100_labels.npz")["fine_to_coarse"].tolist()
    dataset = build_dataset("cifar100", root=cifar100_root, split="train")
    present = set(dataset.fine_targets.tolist())

    assert len(dataset.fine_to_coarse) == 100
    for fine, coarse in enumerate(dataset.fine_to_coarse):
        if fine in present:
            assert coarse == reference[fine]
        else:
            assert coarse == -1
    assert torch.equal(dataset.coarse_targets, torch.tensor(dataset.fine_to_coarse)[dataset.fine_targets])


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_table_from_all_official_labels(shared_data, split):
    labels = np.load(shared_data / "cifar100" / "cifar100_labels.npz")
    table = fine_to_coarse_from_labels(
        labels[f"{split}_fine_labels"],
        labels[f"{split}_coarse_labels"],
        [str(name) for name in labels["fine_label_names"]],
        [str(name) for name in labels["coarse_label_names"]],
    )

    assert table == labels["fine_to_coarse"].tolist()
    assert np.bincount(table, minlength=20).tolist() == [5] * 20


def test_fine_class_under_two_coarse_labels_in_archive(cifar100_root):
    path = cifar100_root / "cifar-100-python" / "train"
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    # Samples 4 and 10 are both "sea" (fine 71, coarse 10); move sample 10 to coarse 0.
    entry["coarse_labels"][10] = 0
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)

    with pytest.raises(HierarchyError) as caught:
        build_dataset("cifar100", root=cifar100_root)
    message = str(caught.value)
    assert "'sea'" in message
    assert "'aquatic_mammals'" in message
    assert "'large_natural_outdoor_scenes'" in message


def test_cifar100_checksum_error(cifar100_archive):
    with pytest.raises(ChecksumError) as caught:
        build_dataset("cifar100", root=cifar100_archive, split="test")
    message = str(caught.value)
    assert str(cifar100_archive / "cifar-100-python" / "test") in message
    assert CIFAR100.test_list[0][1] in message
    assert "download=True" in message


def test_cifar100_meta_checksum_still_checked(cifar100_root):
    meta = cifar100_root / "cifar-100-python" / "meta"
    meta.write_bytes(meta.read_bytes() + b"tampered")
    with pytest.raises(ChecksumError) as caught:
        build_dataset("cifar100", root=cifar100_root)
    assert str(meta) in str(caught.value)


def test_cifar100_missing_root_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", _no_network)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("cifar100", root=missing)
    message = str(caught.value)
    assert str(missing / "cifar-100-python" / "train") in message
    assert "cifar-100-python/{train,test,meta}" in message
    assert "download=True" in message
    assert "data_root" in message
    assert "--download true" in message
    assert "--data-root" in message


def test_cifar100_missing_split_file(cifar100_root):
    (cifar100_root / "cifar-100-python" / "test").unlink()
    build_dataset("cifar100", root=cifar100_root, split="train")
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("cifar100", root=cifar100_root, split="test")
    assert str(cifar100_root / "cifar-100-python" / "test") in str(caught.value)


def _no_network(*args, **kwargs):
    raise AssertionError(f"network download attempted with {args} {kwargs}")


def test_download_uses_torchvision_downloader(cifar100_writer, tmp_path, monkeypatch, skip_checksum_of):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, download_root, filename, md5))
        cifar100_writer(download_root)

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_download)
    skip_checksum_of({"train", "test"})
    root = tmp_path / "fresh"

    dataset = build_dataset("cifar100", root=root, download=True)

    assert calls == [(CIFAR100.url, str(root), CIFAR100.filename, CIFAR100.tgz_md5)]
    assert len(dataset) == 20
    build_dataset("cifar100", root=root, download=True)
    assert len(calls) == 1


# --------------------------------------------------------------------------- subsets


def test_subset_balanced_and_seeded(cifartoy):
    full = cifartoy("good", "train")
    first = balanced_subset_indices(full.fine_targets, 30, seed=0)
    again = balanced_subset_indices(full.fine_targets, 30, seed=0)
    other = balanced_subset_indices(full.fine_targets, 30, seed=1)

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.bincount(full.fine_targets[first].numpy(), minlength=8).tolist() == [30] * 8
    assert np.all(np.diff(first) > 0)


def test_subset_fraction_per_class(cifartoy):
    full = cifartoy("bad", "test")
    chosen = balanced_subset_indices(full.fine_targets, 0.1, seed=5)
    assert np.bincount(full.fine_targets[chosen].numpy(), minlength=8).tolist() == [100] * 8


def test_subset_dataset_keeps_source_indices(cifar10_root, cifartoy):
    full = cifartoy("good", "test")
    subset = build_dataset("cifartoy_good", root=cifar10_root, split="test", subset=4, seed=11)

    assert len(subset) == 32
    assert torch.equal(subset.fine_targets, full.fine_targets[subset.indices])
    assert [full.paths[i] for i in subset.indices.tolist()] == subset.paths
    assert subset.fine_classes == full.fine_classes
    assert subset.fine_to_coarse == full.fine_to_coarse


def test_subset_larger_than_class_keeps_all():
    targets = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    chosen = balanced_subset_indices(targets, 3, seed=0)
    assert np.bincount(targets[chosen].numpy()).tolist() == [2, 3, 1]


# --------------------------------------------------------------------------- image folders


def test_imagefolder_nested_layout(tmp_path):
    root = write_nested_tree(tmp_path / "pets", {"mammal": ["dog", "cat"], "bird": ["owl"]})
    dataset = build_dataset("imagefolder", root=root)

    assert dataset.coarse_classes == ["bird", "mammal"]
    assert dataset.fine_classes == ["cat", "dog", "owl"]
    assert dataset.fine_to_coarse == [1, 1, 0]
    assert len(dataset) == 9
    assert fine_names_of(dataset) == ["cat"] * 3 + ["dog"] * 3 + ["owl"] * 3
    assert dataset.coarse_targets.tolist() == [1] * 6 + [0] * 3
    image, coarse, fine = dataset[8]
    assert isinstance(image, Image.Image)
    assert (coarse, fine) == (0, 2)


def test_imagefolder_split_subfolders_share_labels(tmp_path):
    write_nested_tree(tmp_path / "train", {"mammal": ["dog", "cat"], "bird": ["owl"]})
    write_nested_tree(tmp_path / "test", {"bird": ["owl"]}, images_per_class=2)

    train = build_dataset("imagefolder", root=tmp_path, split="train")
    test = build_dataset("imagefolder", root=tmp_path, split="test")

    assert test.fine_classes == train.fine_classes
    assert test.coarse_classes == train.coarse_classes
    assert len(test) == 2
    assert test.fine_targets.tolist() == [train.fine_classes.index("owl")] * 2
    assert all(path.is_relative_to(tmp_path / "test") for path in test.paths)


def test_imagefolder_missing_split_folder(tmp_path):
    write_nested_tree(tmp_path / "train", {"mammal": ["dog"]})
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("imagefolder", root=tmp_path, split="test")
    message = str(caught.value)
    assert str(tmp_path / "test") in message
    assert "<coarse class>/<fine class>" in message
    assert "data_root" in message


def test_imagefolder_single_folder_test_warns(tmp_path):
    root = write_nested_tree(tmp_path / "pets", {"mammal": ["dog"]})
    with pytest.warns(UserWarning, match="same images"):
        test = build_dataset("imagefolder", root=root, split="test")
    assert len(test) == 3


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("imagefolder", root=tmp_path / "absent")
    message = str(caught.value)
    assert str(tmp_path / "absent") in message
    assert "<coarse class>/<fine class>/<images>" in message
    assert "cannot be downloaded" in message


@pytest.mark.parametrize(
    "file_name, content",
    [
        ("map.json", json.dumps({"dog": "mammal", "cat": "mammal", "owl": "bird"})),
        ("map.json", json.dumps({"mammal": ["dog", "cat"], "bird": ["owl"]})),
        ("map.csv", "fine,coarse\ndog,mammal\ncat, mammal\n\nowl,bird\n"),
        ("map.csv", "dog,mammal\ncat,mammal\nowl,bird\n"),
    ],
)
def test_imagefolder_flat_with_mapping_file(tmp_path, file_name, content):
    root = write_flat_tree(tmp_path / "pets", ["dog", "cat", "owl"])
    mapping = tmp_path / file_name
    mapping.write_text(content)

    dataset = build_dataset("imagefolder", root=root, mapping_file=mapping)

    assert dataset.fine_classes == ["cat", "dog", "owl"]
    assert dataset.coarse_classes == ["bird", "mammal"]
    assert dataset.fine_to_coarse == [1, 1, 0]
    assert fine_names_of(dataset) == ["cat", "cat", "dog", "dog", "owl", "owl"]


def test_imagefolder_finds_mapping_file_in_root(tmp_path):
    root = write_flat_tree(tmp_path / "pets", ["dog", "owl"])
    (root / "fine_to_coarse.csv").write_text("dog,mammal\nowl,bird\n")
    dataset = build_dataset("imagefolder", root=root)
    assert dataset.fine_to_coarse == [1, 0]


def test_imagefolder_flat_without_mapping(tmp_path):
    root = write_flat_tree(tmp_path / "pets", ["dog"])
    with pytest.raises(MappingFileError) as caught:
        build_dataset("imagefolder", root=root)
    message = str(caught.value)
    assert str(root / "dog") in message
    assert "mapping_file" in message


def test_imagefolder_mapping_lacks_folder(tmp_path):
    root = write_flat_tree(tmp_path / "pets", ["dog", "owl", "emu"])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"dog": "mammal"}))
    with pytest.raises(MappingFileError) as caught:
        build_dataset("imagefolder", root=root, mapping_file=mapping)
    message = str(caught.value)
    assert "'emu'" in message
    assert "'owl'" in message
    assert str(mapping) in message


@pytest.mark.parametrize(
    "file_name, content, fragment",
    [
        ("map.csv", "dog,mammal\nowl\n", "line 2"),
        ("map.csv", "dog,mammal,extra\n", "line 1"),
        ("map.json", "{not json", "not valid JSON"),
        ("map.json", "[1, 2]", "JSON object"),
        ("map.json", json.dumps({"dog": 3}), "'dog'"),
        ("map.json", "{}", "no fine-to-coarse pairs"),
        ("map.txt", "dog,mammal\n", "'.txt'"),
    ],
)
def test_imagefolder_malformed_mapping_file(tmp_path, file_name, content, fragment):
    root = write_flat_tree(tmp_path / "pets", ["dog"])
    mapping = tmp_path / file_name
    mapping.write_text(content)
    with pytest.raises(MappingFileError) as caught:
        build_dataset("imagefolder", root=root, mapping_file=mapping)
    assert fragment in str(caught.value)
    assert str(mapping) in str(caught.value)


def test_imagefolder_mapping_file_missing(tmp_path):
    root = write_flat_tree(tmp_path / "pets", ["dog"])
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("imagefolder", root=root, mapping_file=tmp_path / "absent.csv")
    assert str(tmp_path / "absent.csv") in str(caught.value)


def test_mapping_file_with_two_coarse_classes(tmp_path):
    root = write_flat_tree(tmp_path / "pets", ["dog"])
    mapping = tmp_path / "map.csv"
    mapping.write_text("dog,mammal\ndog,bird\n")
    with pytest.raises(HierarchyError) as caught:
        build_dataset("imagefolder", root=root, mapping_file=mapping)
    message = str(caught.value)
    assert "'dog'" in message
    assert "'mammal'" in message
    assert "'bird'" in message


def test_nested_fine_class_under_two_coarse_classes(tmp_path):
    write_nested_tree(tmp_path / "train", {"mammal": ["dog"], "bird": ["owl"]})
    write_nested_tree(tmp_path / "test", {"pet": ["dog"]})
    with pytest.raises(HierarchyError) as caught:
        build_dataset("imagefolder", root=tmp_path)
    message = str(caught.value)
    assert "'dog'" in message
    assert "'mammal'" in message
    assert "'pet'" in message


def test_imagefolder_empty_class_folder(tmp_path):
    root = write_nested_tree(tmp_path / "pets", {"mammal": ["dog"]})
    (root / "mammal" / "cat").mkdir()
    (root / "mammal" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyClassFolderError) as caught:
        build_dataset("imagefolder", root=root)
    message = str(caught.value)
    assert str(root / "mammal" / "cat") in message
    assert ".jpg" in message


def test_imagefolder_empty_coarse_folder(tmp_path):
    root = write_nested_tree(tmp_path / "pets", {"mammal": ["dog"]})
    (root / "reptile").mkdir()
    with pytest.raises(EmptyClassFolderError) as caught:
        build_dataset("imagefolder", root=root)
    assert str(root / "reptile") in str(caught.value)


def test_unreadable_image_named(tmp_path):
    root = write_nested_tree(tmp_path / "pets", {"mammal": ["dog"]}, images_per_class=1)
    broken = root / "mammal" / "dog" / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG file")
    dataset = build_dataset("imagefolder", root=root)
    position = [path.name for path in dataset.paths].index("broken.jpg")

    with pytest.raises(ImageReadError) as caught:
        dataset[position]
    assert str(broken) in str(caught.value)
    with pytest.raises(ImageReadError):
        build_dataset("imagefolder", root=root, in_memory=True)


@pytest.mark.parametrize(
    "mode, file_name, expected",
    [
        ("L", "grey.png", (100, 100, 100)),
        ("RGBA", "alpha.png", (100, 50, 155)),
        ("P", "palette.png", (10, 20, 30)),
        ("RGB", "colour.bmp", (100, 50, 155)),
    ],
)
def test_images_converted_to_rgb(tmp_path, mode, file_name, expected):
    write_image(tmp_path / "pets" / "mammal" / "dog" / file_name, mode=mode, value=100)
    dataset = build_dataset("imagefolder", root=tmp_path / "pets")
    image, _, _ = dataset[0]

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == expected
    assert np.asarray(dataset.to_memory().load_image(0)).shape == (8, 8, 3)


def test_in_memory_needs_one_size(tmp_path):
    root = tmp_path / "pets"
    small = write_image(root / "mammal" / "dog" / "a.png", size=(8, 8))
    large = write_image(root / "mammal" / "dog" / "b.png", size=(12, 6))

    with pytest.raises(ValueError) as caught:
        build_dataset("imagefolder", root=root, in_memory=True)
    message = str(caught.value)
    assert str(small) in message
    assert str(large) in message
    assert "12x6" in message
    assert "in_memory_size" in message

    resized = build_dataset("imagefolder", root=root, in_memory=True, in_memory_size=4)
    assert resized.pixels.shape == (2, 4, 4, 3)


def test_hierarchical_dataset_rejects_inconsistent_labels():
    with pytest.raises(HierarchyError, match="sample 1"):
        HierarchicalDataset(
            name="imagefolder",
            split="train",
            coarse_classes=["a", "b"],
            fine_classes=["x", "y"],
            fine_to_coarse=[0, 1],
            coarse_targets=[0, 0],
            fine_targets=[0, 1],
            pixels=torch.zeros((2, 2, 2, 3), dtype=torch.uint8),
        )


# --------------------------------------------------------------------------- transforms and views


def test_dataset_stats_values():
    assert dataset_stats("cifar100") == ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
    assert dataset_stats("cifartoy_good") == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats("cifartoy_bad") == dataset_stats("cifartoy_good")
    assert dataset_stats("imagefolder") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match="'svhn'"):
        dataset_stats("svhn")


def test_build_transforms_structure():
    views = build_transforms("cifar100", size=24)
    weak = views["weak"].transforms
    strong = views["strong"].transforms

    assert set(views) == {"weak", "strong", "test"}
    assert isinstance(weak[0], T.RandomResizedCrop)
    assert weak[0].size == (24, 24)
    assert weak[0].scale == (0.2, 1.0)
    assert isinstance(weak[1], T.RandomHorizontalFlip)
    assert [type(step) for step in strong[:2]] == [type(step) for step in weak[:2]]
    assert isinstance(strong[2], T.AutoAugment)
    assert strong[2].policy == T.AutoAugmentPolicy.CIFAR10
    assert isinstance(strong[3], T.ToTensor)
    assert not any(isinstance(step, T.AutoAugment) for step in weak)
    assert views["weak"].transforms[-1].mean == (0.507, 0.487, 0.441)


def test_transform_outputs_and_normalisation():
    views = build_transforms("imagefolder", size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    image = Image.new("RGB", (40, 20), (255, 0, 128))

    for key in ("weak", "strong", "test"):
        assert views[key](image).shape == (3, 16, 16)
    tested = views["test"](image)
    assert torch.allclose(tested[0], torch.full((16, 16), 2.0))
    assert torch.allclose(tested[1], torch.full((16, 16), -1.0))
    assert torch.allclose(tested[2], torch.full((16, 16), 128 / 255 - 0.5))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"size": 0}, "invalid size 0"),
        ({"mean": (0.5, 0.5)}, "invalid mean"),
        ({"std": (0.2, 0.0, 0.2)}, "invalid std"),
    ],
)
def test_build_transforms_rejects_bad_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_transforms("cifar100", **kwargs)


def test_two_view_items(cifar100_root):
    base = build_dataset("cifar100", root=cifar100_root, split="test")
    pair = TwoViewDataset(base)
    query, key, coarse, fine, index = pair[7]

    assert query.shape == (3, 32, 32)
    assert key.shape == (3, 32, 32)
    assert query.dtype == torch.float32
    assert (coarse, fine, index) == (int(base.coarse_targets[7]), int(base.fine_targets[7]), 7)
    assert any(isinstance(step, T.AutoAugment) for step in pair.query_transform.transforms)
    assert not any(isinstance(step, T.AutoAugment) for step in pair.key_transform.transforms)
    assert pair.fine_targets is base.fine_targets
    assert pair.coarse_targets is base.coarse_targets
    assert pair.fine_to_coarse == base.fine_to_coarse
    assert len(pair) == 20


def test_two_view_batches_and_custom_views(cifar100_root):
    base = build_dataset("cifar100", root=cifar100_root, split="test")
    test_view = build_transforms("cifar100")["test"]
    small_view = T.Compose([T.Resize(16), T.ToTensor()])
    pair = TwoViewDataset(base, query_transform=test_view, key_transform=small_view)
    query, key, coarse, fine, index = next(iter(DataLoader(pair, batch_size=8, shuffle=False)))

    assert query.shape == (8, 3, 32, 32)
    assert key.shape == (8, 3, 16, 16)
    assert torch.equal(query[3], test_view(base.load_image(3)))
    assert torch.equal(coarse, base.coarse_targets[:8])
    assert torch.equal(fine, base.fine_targets[:8])
    assert index.tolist() == list(range(8))


def test_two_view_rejects_transformed_base(cifar100_root):
    base = build_dataset("cifar100", root=cifar100_root, transform=T.ToTensor())
    with pytest.raises(ValueError, match="transform=None"):
        TwoViewDataset(base)
