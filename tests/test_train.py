"""Configuration, schedule, training runs, resume, run folders and the command lines."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from maskcon_mini import runio
from maskcon_mini.compare import run_comparison
from maskcon_mini.config import PRESETS, TrainConfig, make_config
from maskcon_mini.runio import load_checkpoint, read_jsonl
from maskcon_mini.train import learning_rate_at, resolve_device, train


@pytest.fixture
def deterministic_mode():
    """Turn deterministic algorithms off again after a test that turned them on."""
    yield
    torch.use_deterministic_algorithms(False)


def smoke(cifar10_root, **overrides):
    return make_config("smoke", data_root=str(cifar10_root), **overrides)


# Configuration.

INVALID_FIELDS = [
    ("target_temperature", 0.0, r"target_temperature must be in \(0, inf\]"),
    ("target_temperature", -0.5, "target_temperature"),
    ("target_temperature", math.nan, "target_temperature"),
    ("contrastive_temperature", math.inf, r"contrastive_temperature must be in \(0, inf\)"),
    ("weight", 1.5, r"weight must be in \[0, 1\]"),
    ("weight", -0.1, r"weight must be in \[0, 1\]"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("momentum", -0.2, "momentum"),
    ("method", "simclr", r"method must be one of \['coins', 'grafit', 'maskcon'"),
    ("dataset", "mnist", "dataset must be one of"),
    ("backbone", "vit", "backbone must be one of"),
    ("device", "tpu", "device must be one of"),
    ("amp", "fp8", "amp must be one of"),
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("epochs", 2.5, "epochs must be an integer >= 1"),
    ("batch_size", -4, "batch_size must be an integer >= 1"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("weight_decay", -1e-4, "weight_decay"),
    ("train_subset", 1.5, "train_subset must be None, an integer"),
    ("train_subset", 0, "train_subset must be None"),
    ("recall_ks", (0, 1), "recall_ks must be a non-empty list"),
    ("query_view", "medium", "query_view must be one of"),
    ("train_labels", "middle", "train_labels must be one of"),
    ("eval_every", -1, "eval_every must be an integer >= 0"),
    ("mapping_file", "map.json", "mapping_file applies only to dataset 'imagefolder'"),
]


@pytest.mark.parametrize("field, value, pattern", INVALID_FIELDS)
def test_config_rejects_invalid_field(field, value, pattern):
    with pytest.raises(ValueError, match=pattern) as error:
        make_config("cpu", **{field: value})
    assert repr(value) in str(error.value) or field in str(error.value)


def test_config_rejects_queue_smaller_than_batch():
    with pytest.raises(ValueError, match=r"queue_size=64 and batch_size=128"):
        make_config("paper", queue_size=64)


def test_config_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_epochs=5 and epochs=3"):
        make_config("paper", epochs=3)


def test_config_rejects_pretrained_convnet():
    with pytest.raises(ValueError, match="pretrained"):
        make_config("cpu", pretrained="imagenet")


def test_unknown_preset_and_field_rejected():
    with pytest.raises(ValueError, match=r"preset must be one of \['paper'"):
        make_config("fast")
    with pytest.raises(ValueError, match=r"unknown config fields \['temprature'\]"):
        make_config("cpu", temprature=0.1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(preset):
    config = make_config(preset)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_paper_preset_matches_official_settings():
    config = make_config("paper")
    expected = dict(backbone="resnet18", projection_dim=256, hidden_dim=512, queue_size=8192,
                    momentum=0.99, contrastive_temperature=0.1, target_temperature=0.05,
                    lr=0.02, sgd_momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=200,
                    warmup_epochs=5, query_view="strong", key_view="weak", pretrained=None)
    for field, value in expected.items():
        assert getattr(config, field) == value, field


# Learning-rate schedule.

def test_schedule_warmup_then_cosine():
    total, warmup, base = 100, 10, 0.5
    rates = [learning_rate_at(step, total, warmup, base) for step in range(total)]
    assert rates[0] == pytest.approx(0.05)
    assert rates[9] == pytest.approx(0.5)
    assert rates[10] == pytest.approx(0.5)
    assert rates[55] == pytest.approx(0.25)
    assert rates[-1] == pytest.approx(0.5 * base * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_schedule_without_warmup_starts_at_peak():
    assert learning_rate_at(0, 50, 0, 0.1) == pytest.approx(0.1)


def test_unavailable_device_rejected():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        resolve_device("cuda")


# Training runs on the real CIFAR-10 images.

def test_smoke_run_writes_run_folder(cifar10_root, tmp_path):
    out = tmp_path / "run"
    results = train(smoke(cifar10_root, method="maskcon"), out, progress=False)

    for name in ("config.json", "metrics.jsonl", "results.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert set(results["recall"]) == {"1", "2", "5"}
    assert all(0.0 <= v <= 1.0 for v in results["recall"].values())
    assert results["recall"]["1"] <= results["recall"]["2"] <= results["recall"]["5"]
    assert 0.0 <= results["map_at_r"] <= 1.0
    assert results["environment"]["torch"] == torch.__version__
    assert results["autocast"] == "none"
    assert results["channels_last"] is True  # the smoke preset keeps the default, NHWC
    assert results["process_peak_rss_mib"] > 50

    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        for key in ("loss", "lr", "seconds", "fine_mass", "supcon_fine_mass", "recall"):
            assert math.isfinite(record[key]) if key != "recall" else record[key], key
    assert (list(tmp_path.glob("run/.*.tmp"))) == []


@pytest.mark.parametrize("method", ["selfcon", "supcon", "grafit", "coins"])
def test_every_method_trains(cifar10_root, tmp_path, method):
    results = train(smoke(cifar10_root, method=method, epochs=1, warmup_epochs=0), tmp_path,
                    progress=False)
    assert math.isfinite(results["final_loss"])


def test_resume_matches_straight_run(cifar10_root, tmp_path, deterministic_mode):
    config = smoke(cifar10_root, epochs=5, eval_every=2, deterministic=True)
    straight = train(config, tmp_path / "straight", progress=False)

    first = train(config, tmp_path / "resumed", stop_after_epochs=3, progress=False)
    assert first["epoch"] == 3
    assert not (tmp_path / "resumed" / "results.json").exists()
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)

    assert resumed["recall"] == straight["recall"]
    assert resumed["final_loss"] == straight["final_loss"]
    state_a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    state_b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert without_timing(tmp_path / "resumed") == without_timing(tmp_path / "straight")


def without_timing(run_folder):
    return [{k: v for k, v in record.items() if k != "seconds"}
            for record in read_jsonl(run_folder / "metrics.jsonl")]


def test_existing_run_never_overwritten_silently(cifar10_root, tmp_path):
    config = smoke(cifar10_root, epochs=1, warmup_epochs=0)
    train(config, tmp_path, progress=False)
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(config, tmp_path, progress=False)
    assert (tmp_path / "results.json").read_bytes() == before
    train(config.replace(seed=7), tmp_path, overwrite=True, progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 7


def test_resume_with_other_config_rejected(cifar10_root, tmp_path):
    config = smoke(cifar10_root, epochs=2)
    train(config, tmp_path, stop_after_epochs=1, progress=False)
    with pytest.raises(ValueError, match="config differs .*'weight': \\(0.5, 0.9\\)"):
        train(config.replace(weight=0.9), tmp_path, resume=True, progress=False)


def test_missing_data_fails_before_writing(tmp_path):
    config = make_config("smoke", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def write_flat_image_folder(cifar10_root: Path, root: Path, sizes: dict[str, int]) -> None:
    """Copy 8 real train and 4 real test images per class into ``root/{train,test}/<fine>/``.

    Each fine class's images are resized to its entry in ``sizes``, so the folder mixes sizes.
    """
    for split, count in (("train", 8), ("test", 4)):
        for fine, size in sizes.items():
            sources = sorted((cifar10_root / "cifar10" / split / fine).glob("*.jpg"))[:count]
            folder = root / split / fine
            folder.mkdir(parents=True)
            for source in sources:
                Image.open(source).convert("RGB").resize((size, size)).save(folder / f"{source.stem}.png")


def test_flat_folder_with_mapping_trains(cifar10_root, tmp_path):
    root = tmp_path / "pets"
    write_flat_image_folder(cifar10_root, root, {"cat": 32, "dog": 40, "bird": 32, "airplane": 48})
    mapping = tmp_path / "labels" / "fine_to_coarse.csv"
    mapping.parent.mkdir()
    mapping.write_text("cat,mammal\ndog,mammal\nbird,flyer\nairplane,flyer\n")
    config = make_config("smoke", dataset="imagefolder", data_root=str(root), mapping_file=str(mapping),
                         train_subset=None, test_subset=None, epochs=1, warmup_epochs=0)

    results = train(config, tmp_path / "run", progress=False)

    assert json.loads((tmp_path / "run" / "config.json").read_text())["mapping_file"] == str(mapping)
    assert set(results["recall"]) == {"1", "2", "5"}
    assert math.isfinite(results["final_loss"])


def test_flat_folder_error_names_mapping_option(cifar10_root, tmp_path):
    root = tmp_path / "pets"
    write_flat_image_folder(cifar10_root, root, {"cat": 32, "dog": 32})
    config = make_config("smoke", dataset="imagefolder", data_root=str(root))
    with pytest.raises(Exception, match="mapping") as caught:
        train(config, tmp_path / "run", progress=False)
    assert "fine_to_coarse" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_the_run(cifar10_root, tmp_path, monkeypatch):
    from maskcon_mini import model as model_module

    real_compute_loss = model_module.compute_loss

    def nan_after_first_steps(batch, settings):
        result = real_compute_loss(batch, settings)
        nan_after_first_steps.calls += 1
        if nan_after_first_steps.calls > 1:
            result.loss = result.loss * math.nan
        return result

    nan_after_first_steps.calls = 0
    monkeypatch.setattr(model_module, "compute_loss", nan_after_first_steps)

    with pytest.raises(FloatingPointError, match=r"the loss became nan between steps 1 and \d+; lower lr"):
        train(smoke(cifar10_root, epochs=1, warmup_epochs=0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


def test_epoch_stats_pool_and_skip_empty():
    from maskcon_mini.train import EpochStats

    stats = EpochStats()
    stats.add("loss", torch.tensor(2.0))
    stats.add("loss", torch.tensor(4.0))
    stats.add("fine_mass", torch.tensor(1.5), torch.tensor(3))
    stats.add("fine_mass", torch.tensor(0.5), torch.tensor(1))
    stats.add("never", torch.tensor(0.0), torch.tensor(0))
    stats.add("skipped", math.nan)

    assert stats.means() == {"loss": 3.0, "fine_mass": 0.5}


def test_checkpoint_loads_with_weights_only(cifar10_root, tmp_path):
    train(smoke(cifar10_root, epochs=1, warmup_epochs=0), tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scaler", "state", "rng"} <= set(state)
    assert "queue.keys" in state["model"]
    assert state["state"]["epoch"] == 1


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runio.save_checkpoint(path, {"value": torch.tensor([1.0])})

    def crash_midway(obj, target):
        with open(target, "wb") as stream:
            stream.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        runio.save_checkpoint(path, {"value": torch.tensor([2.0])})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["value"], torch.tensor([1.0]))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_interrupted_json_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    runio.write_json(path, {"recall": 1})
    monkeypatch.setattr(runio.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        runio.write_json(path, {"recall": 2})
    assert json.loads(path.read_text()) == {"recall": 1}


# Command lines.

def test_train_cli_help_states_ranges():
    result = subprocess.run([sys.executable, "-m", "maskcon_mini.train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--target-temperature" in result.stdout
    assert "(0, inf]" in result.stdout
    assert "--resume" in result.stdout
    assert "--mapping-file" in result.stdout


def test_train_cli_rejects_invalid_value(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "maskcon_mini.train", "--preset", "smoke", "--weight", "2",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "weight must be in [0, 1], got 2" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_cli_smoke_run(cifar10_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "maskcon_mini.train", "--preset", "smoke", "--method", "supcon",
         "--data-root", str(cifar10_root), "--out", str(tmp_path / "run"), "--epochs", "1",
         "--warmup-epochs", "0", "--target-temperature", "inf", "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"] == "supcon"
    assert config["target_temperature"] == math.inf
    assert "R@1" in result.stdout


def test_comparison_writes_table_and_plot(cifar10_root, tmp_path):
    base = smoke(cifar10_root, epochs=1, warmup_epochs=0)
    table = run_comparison(base, tmp_path, methods=("maskcon", "selfcon"), seeds=(1,),
                           progress=False)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | runs | R@1 | R@2 | R@5 |")
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["untrained (floor)", "selfcon", "maskcon (w=0.5, T=0.05)"]
    for figure in ("comparison.png", "curves.png", "fine_mass.png"):
        assert (tmp_path / figure).stat().st_size > 1000, figure
    assert (tmp_path / "comparison.md").read_text().count("\n|") >= 3
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert {row["label"] for row in rows} == set(labels)

    # A second call resumes: finished runs are kept, not trained again.
    stamp = (tmp_path / "maskcon-seed1" / "results.json").stat().st_mtime_ns
    run_comparison(base, tmp_path, methods=("maskcon", "selfcon"), seeds=(1,), progress=False)
    assert (tmp_path / "maskcon-seed1" / "results.json").stat().st_mtime_ns == stamp


def test_train_cli_rejects_non_boolean_word(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "maskcon_mini.train", "--preset", "smoke", "--in-memory", "maybe",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--in-memory must be true or false, got 'maybe'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_cli_reports_existing_run_without_traceback(cifar10_root, tmp_path):
    command = [sys.executable, "-m", "maskcon_mini.train", "--preset", "smoke", "--epochs", "1",
               "--warmup-epochs", "0", "--data-root", str(cifar10_root), "--out",
               str(tmp_path / "run"), "--no-progress"]
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in again.stderr
    assert "--overwrite" in again.stderr


def test_run_files_are_readable_by_others(tmp_path):
    path = runio.write_json(tmp_path / "results.json", {"recall": 1})
    assert path.stat().st_mode & 0o044 == 0o044


def test_comparison_rejects_runs_of_other_settings(cifar10_root, tmp_path):
    base = smoke(cifar10_root, epochs=1, warmup_epochs=0)
    run_comparison(base, tmp_path, methods=("selfcon",), seeds=(1,), floor=False, progress=False)
    with pytest.raises(ValueError, match=r"other settings .*'width': \(4, 8\)"):
        run_comparison(base.replace(width=8), tmp_path, methods=("selfcon",), seeds=(2,),
                       floor=False, progress=False)
    assert not (tmp_path / "selfcon-seed2").exists()

    run_comparison(base.replace(width=8), tmp_path, methods=("selfcon",), seeds=(2,),
                   floor=False, progress=False, overwrite=True)
    assert not (tmp_path / "selfcon-seed1").exists()
    assert (tmp_path / "selfcon-seed2" / "results.json").exists()
