"""The prepared GPU check script: its synthetic image folder, projection and command runner."""

import importlib.util
import sys
from pathlib import Path

import pytest

from maskcon_mini.data import build_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_folder_has_cifar100_shape(gpu_check, tmp_path):
    gpu_check.write_image_folder(tmp_path, train_per_class=1, test_per_class=2)

    train = build_dataset("imagefolder", root=tmp_path, split="train")
    test = build_dataset("imagefolder", root=tmp_path, split="test")

    assert len(train.coarse_classes) == 20
    assert len(train.fine_classes) == 100
    assert len(train) == 100
    assert len(test) == 200
    assert set(train.fine_to_coarse) == set(range(20))
    assert train[0][0].size == (32, 32)


def test_projection_scales_step_and_scoring_times(gpu_check):
    epoch = {"second_epoch_seconds_per_step": 0.05, "scoring_seconds": 2.0}

    projection = gpu_check.project_paper_run(epoch, test_images=2_000)

    assert projection["steps"] == 200 * 390
    assert projection["training_hours"] == pytest.approx(78_000 * 0.05 / 3600)
    assert projection["scorings"] == 20
    assert projection["scoring_hours"] == pytest.approx(20 * 2.0 * 5 / 3600)
    assert projection["total_hours"] == pytest.approx(
        projection["training_hours"] + projection["scoring_hours"])


def test_invalid_folder_sizes_rejected(gpu_check, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--test-per-class", "1"])
    assert "--test-per-class" in capsys.readouterr().err


def test_too_few_train_images_rejected(gpu_check, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--train-per-class", "81"])
    assert "queue of 8192 keys" in capsys.readouterr().err


def test_quick_mode_uses_two_images_per_class(gpu_check):
    args = gpu_check.parse_args(["--out", "x", "--quick", "--train-per-class", "5"])
    assert (args.train_per_class, args.test_per_class) == (2, 2)


def test_failed_module_command_named(gpu_check, tmp_path):
    command = [sys.executable, "-m", "maskcon_mini.train", "--preset", "no-such-preset"]
    with pytest.raises(SystemExit, match=r"maskcon_mini\.train failed with exit code 2"):
        gpu_check.run_logged(command, tmp_path / "train.log")
    assert "no-such-preset" in (tmp_path / "train.log").read_text()
