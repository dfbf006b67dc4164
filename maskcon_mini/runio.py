"""Run folders: atomic writes of JSON, metrics and checkpoints, and run metadata.

Every file is written to a temporary file in the same folder and then moved over the target
with ``os.replace``, which is atomic on POSIX and Windows. A process killed during a save leaves
the previous version of the file intact.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "atomic_write",
    "write_json",
    "read_json",
    "write_jsonl",
    "read_jsonl",
    "save_checkpoint",
    "load_checkpoint",
    "environment_info",
    "CONFIG_FILE",
    "METRICS_FILE",
    "RESULTS_FILE",
    "CHECKPOINT_FILE",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then move the temporary file over ``path``.

    Args:
        path: the final file.
        write: a function that writes the complete file at the path it receives.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp creates the file readable by its owner only; give it the usual mode instead.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(text: str) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        with open(target, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())

    return write


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, _write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically (the whole file is rewritten)."""
    text = "".join(json.dumps(record) + "\n" for record in records)
    return atomic_write(path, _write_text(text))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a missing file gives an empty list."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save a checkpoint dict with ``torch.save``, atomically.

    The state must hold only tensors, numbers, strings, lists, tuples and dicts, so that
    ``load_checkpoint`` can read it with ``weights_only=True``.
    """
    return atomic_write(path, lambda target: torch.save(state, target))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code is unpickled).

    Raises:
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


@functools.lru_cache(maxsize=None)
def git_commit(folder: str | Path | None = None) -> str | None:
    """Return the git commit of ``folder`` (default: this package) at the first call, or None.

    The result is cached, so all runs of one process record the commit that was checked out
    when the process first asked, even if later commits happen while it trains.
    """
    folder = Path(folder) if folder else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment_info(device: torch.device) -> dict[str, Any]:
    """Return versions, device and host facts for ``results.json``."""
    import torchvision

    from . import __version__

    info = {
        "maskcon_mini": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
