"""Helpers shared by the notebook tests: papermill execution and output inspection."""

from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SANITIZE_CONFIG = NOTEBOOK_DIR / "nbval_sanitize.cfg"
COLAB_URL = "https://colab.research.google.com/github/maskcon-mini/maskcon-mini/blob/main/notebooks/"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_NOTEBOOK_BYTES = 1_000_000
CELL_TIMEOUT_S = 600
KERNEL_START_TIMEOUT_S = 180


def execute_notebook(name: str, output: Path, cwd: Path, **parameters):
    """Run ``notebooks/<name>`` with papermill into ``output`` and return the executed notebook."""
    import papermill

    papermill.execute_notebook(
        str(NOTEBOOK_DIR / name),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(cwd),
        progress_bar=False,
        # A cell or kernel start that hangs fails the test instead of stalling the suite.
        execution_timeout=CELL_TIMEOUT_S,
        start_timeout=KERNEL_START_TIMEOUT_S,
    )
    return nbformat.read(output, as_version=4)


def _code_outputs(notebook, output_type: str):
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.output_type == output_type:
                yield output


def error_outputs(notebook) -> list[str]:
    """Return ``"ename: evalue"`` for every error output of the notebook."""
    return [f"{output.get('ename')}: {output.get('evalue')}"
            for output in _code_outputs(notebook, "error")]


def stream_text(notebook) -> str:
    """Return all printed (stream) output of the notebook, concatenated."""
    return "".join(output.get("text", "") for output in _code_outputs(notebook, "stream"))


def assert_png(path: Path) -> None:
    """Assert that ``path`` is a non-trivial PNG file."""
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG file"
    assert len(data) > 1000, f"{path} has only {len(data)} bytes"
