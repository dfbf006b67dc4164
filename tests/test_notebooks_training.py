"""Notebooks 03 (training) and 04 (results) and the papermill sweep that chains them.

Each notebook is executed by a real ``python3`` Jupyter kernel on the real CIFAR-10 images of the
``cifar10_root`` fixture. The papermill runs use the ``smoke`` preset and write into ``tmp_path``.

The nbval runs re-execute the committed notebooks with their default parameters, so notebook 03
trains its quick CPU run (2 epochs of the ``cpu`` preset). That run goes to
``.cache/notebook-runs`` in the repository and stays there. The first test session trains it,
which took 1 to 3.5 minutes on 2 busy CPU cores. Every later nbval run, including the second
one of the same test, loads the finished run. Delete that folder to train it again.
"""

import fcntl
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_support import (
    COLAB_URL,
    MAX_NOTEBOOK_BYTES,
    SANITIZE_CONFIG,
    assert_png,
    error_outputs,
    execute_notebook,
    stream_text,
)

papermill = pytest.importorskip("papermill")
pytest.importorskip("nbval")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TRAIN_NOTEBOOK = "03_train_cifar.ipynb"
RESULTS_NOTEBOOK = "04_results.ipynb"
NOTEBOOKS = (TRAIN_NOTEBOOK, RESULTS_NOTEBOOK)
NBVAL_RUNS_DIR = REPO_ROOT / ".cache" / "notebook-runs"
# The first nbval run of a fresh checkout trains the quick CPU run of notebook 03.
NBVAL_TIMEOUT_S = 900
RESULTS_FIGURES = ("04_recall_bars.png", "04_training_curves.png", "04_fine_mass.png",
                   "04_embedding_map.png", "04_retrieval_maskcon.png", "04_retrieval_supcon.png")

pytestmark = pytest.mark.slow


def execute(name: str, tmp_path: Path, **parameters):
    """Run a notebook with papermill in ``tmp_path`` and return the executed notebook."""
    return execute_notebook(name, tmp_path / f"executed-{len(list(tmp_path.glob('executed-*')))}-{name}", tmp_path, **parameters)


def smoke_parameters(cifar10_root: Path, tmp_path: Path, **changes) -> dict:
    return {
        "preset": "smoke",
        "data_root": str(cifar10_root),
        "runs_root": str(tmp_path / "runs"),
        "run_name": "smoke",
        "figures_dir": str(tmp_path / "figures"),
        **changes,
    }


def load_sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", REPO_ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Notebook 03 with smoke parameters.


def test_train_notebook_resumes_and_reruns(cifar10_root, tmp_path):
    from maskcon_mini.config import make_config
    from maskcon_mini.train import train

    # An interrupted run: one of the smoke preset's two epochs, with the notebook's config.
    run_dir = tmp_path / "runs" / "smoke"
    train(make_config("smoke", data_root=str(cifar10_root), seed=1228), run_dir,
          stop_after_epochs=1, progress=False)
    assert not (run_dir / "results.json").exists()

    notebook = execute(TRAIN_NOTEBOOK, tmp_path, **smoke_parameters(cifar10_root, tmp_path))
    assert error_outputs(notebook) == []
    assert "resuming" in stream_text(notebook)
    assert "after epoch 1 of 2" in stream_text(notebook)

    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "maskcon"
    assert sorted(results["recall"], key=int) == ["1", "2", "5"]
    for k, value in results["recall"].items():
        assert math.isfinite(value), f"R@{k} is {value}"
        assert 0.0 <= value <= 1.0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["loss"])
        assert 0.0 <= record["fine_mass"] <= 1.0
        assert 0.0 <= record["supcon_fine_mass"] <= 1.0
        assert "recall" in record
    for figure in ("03_training_curves.png", "03_fine_mass.png"):
        assert_png(tmp_path / "figures" / figure)
    text = stream_text(notebook)
    assert "CPU RUNTIME" in text
    assert "metrics.jsonl has one record per epoch: True" in text
    assert "every Recall@K in results.json is finite: True" in text

    # A second run of the notebook loads the finished run and trains nothing.
    checkpoint_time = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    saved_results = (run_dir / "results.json").read_text()
    rerun = execute(TRAIN_NOTEBOOK, tmp_path, **smoke_parameters(cifar10_root, tmp_path))
    assert error_outputs(rerun) == []
    assert "holds a finished run" in stream_text(rerun)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == checkpoint_time
    assert (run_dir / "results.json").read_text() == saved_results


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("weight", 2, "weight must be in [0, 1], got 2"),
        ("preset", "gpu", "preset must be 'auto' or one of"),
    ],
)
def test_train_notebook_rejects_bad_parameter(cifar10_root, tmp_path, name, value, expected):
    parameters = smoke_parameters(cifar10_root, tmp_path, **{name: value})
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        execute(TRAIN_NOTEBOOK, tmp_path, **parameters)
    assert raised.value.ename == "ValueError"
    assert raised.value.evalue.startswith("invalid parameter:")
    assert expected in raised.value.evalue
    assert not (tmp_path / "runs").exists(), "a bad parameter must stop before any file is written"


# The sweep: notebook 03 per method and seed, then notebook 04.


def test_sweep_compares_two_methods(cifar10_root, tmp_path):
    from maskcon_mini.config import make_config
    from maskcon_mini.train import train

    out = tmp_path / "sweep"
    # A finished run with another budget (1 epoch): notebook 04 must leave it out.
    train(make_config("smoke", data_root=str(cifar10_root), epochs=1), out / "one-epoch",
          progress=False)

    sweep = load_sweep_module()
    status = sweep.main(["--methods", "maskcon,supcon", "--seeds", "7", "--preset", "smoke",
                         "--out", str(out), "--data-root", str(cifar10_root), "--no-progress"])
    assert status == 0

    for run in ("maskcon-seed7", "supcon-seed7"):
        assert (out / run / "results.json").is_file()
        assert (out / "notebooks" / f"03_train_cifar-{run}.ipynb").is_file()
        assert_png(out / "figures" / run / "03_fine_mass.png")
    for figure in RESULTS_FIGURES:
        assert_png(out / "figures" / figure)

    table = (out / "figures" / "04_results_table.md").read_text()
    recall_table, budget_table = table.split("## Budget of each run")
    method_rows = [line.split(" | ")[0] for line in recall_table.splitlines()
                   if line.startswith("| ") and not line.startswith("| method")]
    assert method_rows == ["| supcon", "| maskcon (w=0.5, T=0.05)"]
    assert "| supcon | 1 |" in recall_table
    assert "| maskcon (w=0.5, T=0.05) | 1 |" in recall_table
    assert "| maskcon-seed7 | maskcon (w=0.5, T=0.05) | 7 | 2 | 16 |" in budget_table
    assert "one-epoch" not in table
    assert "| steps | 16 (mean of trained runs) | 62,400 |" in budget_table, "the official budget in steps"

    results = nbformat.read(out / "04_results.ipynb", as_version=4)
    assert error_outputs(results) == []
    text = stream_text(results)
    assert "comparing the 2 with the budget" in text
    assert "left out (budget differs: epochs=1): one-epoch" in text


def test_sweep_rejects_bad_options(capsys):
    sweep = load_sweep_module()
    for argv, message in [
        (["--methods", "maskcon,simclr"], "unknown methods ['simclr']"),
        (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
        (["--preset", "huge"], "--preset must be 'auto' or one of"),
        (["-p", "method", "supcon"], "-p method is set by the sweep itself"),
    ]:
        with pytest.raises(SystemExit):
            sweep.parse_args(argv)
        assert message in capsys.readouterr().err


def test_sweep_plans_runs_and_parameters():
    sweep = load_sweep_module()
    args, extra = sweep.parse_args(["--methods", "maskcon,selfcon", "--seeds", "1,2", "--oracle",
                                    "-p", "epochs", "5", "-p", "weight", "0.25",
                                    "-p", "train_subset", "none"])
    assert extra == {"epochs": 5, "weight": 0.25, "train_subset": None}
    jobs = sweep.plan_runs(args.methods, args.seeds, args.oracle)
    assert [job["name"] for job in jobs] == ["maskcon-seed1", "selfcon-seed1", "maskcon-seed2",
                                             "selfcon-seed2", "supcon-oracle-seed1",
                                             "supcon-oracle-seed2"]
    assert jobs[-1]["train_labels"] == "fine"
    parameters = sweep.train_parameters(jobs[0], args, Path("/runs"), extra)
    assert parameters["run_name"] == "maskcon-seed1"
    assert parameters["runs_root"] == "/runs"
    assert parameters["resume"] is True
    assert parameters["quick_cpu_run"] is False
    assert parameters["epochs"] == 5


# The committed notebooks.


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_layout(name):
    path = NOTEBOOK_DIR / name
    notebook = nbformat.read(path, as_version=4)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert COLAB_URL + name in notebook.cells[0].source

    parameter_cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameter_cells) == 1
    assert "use_drive = False" in parameter_cells[0].source
    tags = {tag for cell in notebook.cells for tag in cell.metadata.get("tags", [])}
    assert "injected-parameters" not in tags

    setup = next(cell.source for cell in notebook.cells if cell.source.startswith("# Setup"))
    assert "except ImportError:\n    # A fresh runtime such as Colab" in setup
    assert "drive.mount" in setup

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), "a code cell was not executed"
    assert error_outputs(notebook) == []
    mime_types = {
        mime
        for cell in code_cells
        for output in cell.get("outputs", [])
        for mime in output.get("data", {})
    }
    assert "image/png" in mime_types
    assert not mime_types & {"image/svg+xml", "application/pdf"}


def test_committed_train_notebook_is_the_quick_cpu_run():
    notebook = nbformat.read(NOTEBOOK_DIR / TRAIN_NOTEBOOK, as_version=4)
    text = stream_text(notebook)
    assert "CPU RUNTIME" in text
    assert "SHORT RUN: 2 epochs on 500 images per fine class" in text


def run_nbval(output_dir: Path, data_root: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, MASKCON_DATA_ROOT=str(data_root),
                       MASKCON_NOTEBOOK_OUTPUT=str(output_dir), MASKCON_RUNS_DIR=str(NBVAL_RUNS_DIR))
    command = [
        sys.executable, "-m", "pytest", "--nbval-lax",
        "--nbval-sanitize-with", str(SANITIZE_CONFIG),
        *(str(NOTEBOOK_DIR / name) for name in NOTEBOOKS),
        "-p", "no:cacheprovider", "-q",
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=NBVAL_TIMEOUT_S)


def test_committed_outputs_pass_nbval_twice(cifar10_root, tmp_path):
    output_dir = tmp_path / "nbval-output"
    NBVAL_RUNS_DIR.mkdir(parents=True, exist_ok=True)
    # Two test sessions at once would train into the same run folder.
    with open(NBVAL_RUNS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in (1, 2):
            result = run_nbval(output_dir, cifar10_root)
            assert result.returncode == 0, (
                f"nbval run {attempt} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
            assert_png(output_dir / "03_fine_mass.png")
            assert (output_dir / "04_results_table.md").is_file()
