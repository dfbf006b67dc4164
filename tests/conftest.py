"""Shared fixtures: the real CIFAR-10 images as an image-folder tree, and a small CIFAR-100 archive.

The real data come from a ``shared/data`` folder beside the repository checkout, or from
the folder named by MASKCON_SHARED_DATA. No test touches the network.
"""

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_TREE_MARKER = Path("cifar10") / ".complete"


def shared_data_dir() -> Path:
    """Return the shared real-data folder, or fail the test with the places that were tried."""
    override = os.environ.get("MASKCON_SHARED_DATA")
    folder = Path(override) if override else REPO_ROOT.parent / "shared" / "data"
    if not (folder / "cifar10").is_dir() or not (folder / "cifar100").is_dir():
        pytest.fail(
            f"real test data not found in {folder} (expected cifar10/ and cifar100/ there). "
            "Put the shared data folder beside the repository checkout as shared/data, "
            "or set MASKCON_SHARED_DATA to its path."
        )
    return folder


def cached_test_data_dir() -> Path:
    """Return the folder where generated test data are cached between runs."""
    override = os.environ.get("MASKCON_TEST_DATA")
    return Path(override) if override else REPO_ROOT / ".cache" / "test-data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder."""
    return shared_data_dir()


@pytest.fixture(scope="session")
def cifar10_root(shared_data: Path) -> Path:
    """A data root that contains the 60,000 real CIFAR-10 images as ``cifar10/{train,test}/<class>/``.

    The tree is written once into the cache folder and reused by later runs. An exclusive
    file lock serialises pytest-xdist workers, so only one of them writes it.
    """
    cache = cached_test_data_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".materialize.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (cache / CIFAR10_TREE_MARKER).exists():
                script = shared_data / "materialize_cifar10.py"
                result = subprocess.run([sys.executable, str(script), str(cache)], capture_output=True, text=True)
                if result.returncode != 0:
                    pytest.fail(f"{script} failed with exit code {result.returncode}:\n{result.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cache


def write_cifar100_archive(shared_data: Path, root: Path) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` in torchvision's pickle format.

    Both splits hold the first 20 official CIFAR-100 test images with their real labels,
    and ``meta`` is the genuine file. Returns ``root``.
    """
    images = np.load(shared_data / "cifar100" / "cifar100_test_first20_exact.npz")
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)

    rows = images["x"].transpose(0, 3, 1, 2).reshape(len(images["x"]), 3072)
    for split in ("train", "test"):
        entry = {
            "filenames": [str(name) for name in images["filenames"]],
            "batch_label": f"{split} batch written by the maskcon-mini tests",
            "fine_labels": [int(label) for label in images["fine_labels"]],
            "coarse_labels": [int(label) for label in images["coarse_labels"]],
            "data": np.ascontiguousarray(rows, dtype=np.uint8),
        }
        with open(folder / split, "wb") as file:
            pickle.dump(entry, file, protocol=2)
    shutil.copyfile(shared_data / "cifar100" / "cifar-100-python" / "meta", folder / "meta")
    return root


def fake_checksum_for(file_names: set[str]):
    """Return a replacement for torchvision's check_integrity that accepts ``file_names`` unchecked.

    Other files, such as the genuine meta, still get the real MD5 check.
    """
    from torchvision.datasets import utils as tv_utils

    real_check = tv_utils.check_integrity

    def check_integrity(fpath, md5=None):
        if Path(fpath).name in file_names:
            return Path(fpath).is_file()
        return real_check(fpath, md5)

    return check_integrity


@pytest.fixture
def skip_checksum_of(monkeypatch: pytest.MonkeyPatch):
    """Return a function that makes torchvision's MD5 check accept the given file names for this test."""

    def patch(file_names: set[str]) -> None:
        monkeypatch.setattr("torchvision.datasets.utils.check_integrity", fake_checksum_for(set(file_names)))

    return patch


@pytest.fixture
def cifar100_writer(shared_data: Path):
    """Return a function that writes the small CIFAR-100 archive under a given data root."""
    return lambda root: write_cifar100_archive(shared_data, Path(root))


@pytest.fixture
def cifar100_archive(shared_data: Path, tmp_path: Path) -> Path:
    """A data root with a small CIFAR-100 archive whose train and test files fail the MD5 check."""
    return write_cifar100_archive(shared_data, tmp_path / "data")


@pytest.fixture
def cifar100_root(cifar100_archive: Path, skip_checksum_of) -> Path:
    """The small CIFAR-100 archive, with the MD5 check skipped for its train and test files only."""
    skip_checksum_of({"train", "test"})
    return cifar100_archive
