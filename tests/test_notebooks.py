"""The teaching notebooks: papermill runs with small parameters, nbval on the committed outputs.

Each notebook is executed by a real ``python3`` Jupyter kernel. The papermill runs read the
real CIFAR-10 images of the ``cifar10_root`` fixture and write into ``tmp_path``. The nbval
runs re-execute the committed notebooks and compare the cells marked ``# NBVAL_CHECK_OUTPUT``
with their stored outputs. Together these tests take about 2 minutes on 2 CPU cores.
"""

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
NOTEBOOKS = ("01_soft_labels.ipynb", "02_special_cases.ipynb")
NBVAL_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def execute(name: str, tmp_path: Path, **parameters):
    """Run a notebook with papermill in ``tmp_path`` and return the executed notebook."""
    return execute_notebook(name, tmp_path / name, tmp_path, **parameters)


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    """A run folder laid out as training writes it, holding an untrained smoke-preset model."""
    import torch

    from maskcon_mini.config import make_config
    from maskcon_mini.runio import CHECKPOINT_FILE, CONFIG_FILE, save_checkpoint, write_json
    from maskcon_mini.train import build_model

    run = tmp_path / "run"
    config = make_config("smoke")
    torch.manual_seed(0)
    model = build_model(config, num_coarse_classes=2)
    write_json(run / CONFIG_FILE, config.to_dict())
    save_checkpoint(run / CHECKPOINT_FILE, {"model": model.state_dict()})
    return run


# Papermill runs with small parameters.


def test_soft_labels_writes_figures(cifar10_root, trained_run, tmp_path):
    output_dir = tmp_path / "out"
    notebook = execute(
        "01_soft_labels.ipynb",
        tmp_path,
        data_root=str(cifar10_root),
        output_dir=str(output_dir),
        run_dir=str(trained_run),
        queue_per_class=1,
        anchor_class="dog",
        interactive=True,
    )
    assert error_outputs(notebook) == []
    for figure in ("01_target_rows.png", "01_temperature_weight_grid.png", "01_sample_relations.png"):
        assert_png(output_dir / figure)
    assert sorted(path.suffix for path in output_dir.iterdir()) == [".png"] * 3
    text = stream_text(notebook)
    assert "batch: B = 8, queue: K = 8" in text
    assert "keys from the trained convnet (maskcon, run)" in text
    assert "by hand and maskcon_targets agree" in text


def test_soft_labels_sliders_without_ipywidgets(monkeypatch, capsys):
    notebook = nbformat.read(NOTEBOOK_DIR / "01_soft_labels.ipynb", as_version=4)
    slider_cell = next(cell.source for cell in notebook.cells
                       if cell.cell_type == "code" and "import ipywidgets" in cell.source)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes the import raise ImportError
    exec(slider_cell, {"interactive": True, "math": math, "low_temperature": 0.05})
    assert "ipywidgets is not installed" in capsys.readouterr().out


def test_soft_labels_reports_missing_data(tmp_path):
    empty_root = tmp_path / "no-data"
    empty_root.mkdir()
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        execute("01_soft_labels.ipynb", tmp_path, data_root=str(empty_root),
                output_dir=str(tmp_path / "out"))
    assert raised.value.ename == "FileNotFoundError"
    assert "not found" in raised.value.evalue
    assert "download=True" in raised.value.evalue


def test_special_cases_differences(tmp_path):
    output_dir = tmp_path / "out"
    notebook = execute("02_special_cases.ipynb", tmp_path, output_dir=str(output_dir),
                       seed=1, queue_size=24)
    assert error_outputs(notebook) == []
    assert_png(output_dir / "02_special_cases.png")

    results = json.loads((output_dir / "02_special_cases.json").read_text())
    assert results["selfcon"] == {"targets_max_abs_diff": 0.0, "loss_abs_diff": 0.0}
    assert results["supcon"] == {"targets_max_abs_diff": 0.0, "loss_abs_diff": 0.0}
    assert results["grafit"]["targets_max_abs_diff"] == 0.0
    assert results["grafit"]["loss_relative_diff"] < 1e-6
    assert results["nearest"]["targets_max_abs_diff"] == 0.0
    assert results["coins"]["logits_equal"] is True
    assert results["coins"]["targets_equal"] is True
    assert results["coins"]["loss_changes_with_head"] is True
    assert results["coins"]["head_receives_gradient"] is True
    first_loss, second_loss = results["coins"]["losses"]
    assert first_loss != second_loss


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
    assert "injected-parameters" not in {tag for cell in notebook.cells for tag in cell.metadata.get("tags", [])}

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


def run_nbval(output_dir: Path, data_root: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, MASKCON_DATA_ROOT=str(data_root), MASKCON_NOTEBOOK_OUTPUT=str(output_dir))
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
    for attempt in (1, 2):
        result = run_nbval(output_dir, cifar10_root)
        assert result.returncode == 0, f"nbval run {attempt} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
        assert (output_dir / "02_special_cases.json").is_file()
