"""environment.yml and pyproject.toml must list the same requirements."""

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def normalise(requirement: str) -> str:
    match = re.match(r"([A-Za-z0-9_.\-]+)(.*)", requirement.strip())
    return match.group(1).lower().replace("_", "-") + match.group(2).replace(" ", "")


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {normalise(r) for r in requirements}


def environment_requirements() -> set[str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    return {normalise(r) for r in pip_section if not r.startswith("-e")}


def test_environment_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_environment_installs_the_package():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def test_python_versions_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_python = next(d for d in environment["dependencies"] if str(d).startswith("python"))
    assert project["requires-python"] == conda_python.removeprefix("python")
