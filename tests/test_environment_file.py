"""environment.yml (the conda route) installs what pyproject.toml declares: conda-forge only, the same packages
with the same version bounds, and the package itself in editable mode with the extras it names."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# pip names that conda-forge spells differently
CONDA_NAMES = {"torch": "pytorch"}
# "name>=1,<2" -> ("name", ">=1,<2"); an extra such as "ccmix[test]" is not a requirement of either file
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!~]=?\s*[^,;\s]+\s*,?\s*)*)\s*$")


def split_requirement(text: str) -> tuple[str, str]:
    """Return (normalised name, bounds without spaces) of a pip or conda requirement line."""
    match = REQUIREMENT.match(text)
    assert match, f"not a plain requirement: {text!r}"
    return re.sub(r"[-_.]+", "-", match.group(1).lower()), re.sub(r"\s+", "", match.group(2))


@pytest.fixture(scope="module")
def files():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    return project, environment


def conda_and_pip_parts(environment: dict) -> tuple[list[str], list[str]]:
    conda = [entry for entry in environment["dependencies"] if isinstance(entry, str)]
    pip = [line for entry in environment["dependencies"] if isinstance(entry, dict) for line in entry.get("pip", [])]
    return conda, pip


def test_only_conda_forge_is_used(files):
    _, environment = files
    assert environment["channels"] == ["conda-forge"]
    conda, _ = conda_and_pip_parts(environment)
    assert not [entry for entry in conda if "::" in entry]  # no package pinned to another channel


def test_the_packages_and_bounds_are_those_of_pyproject(files):
    project, environment = files
    conda, pip = conda_and_pip_parts(environment)
    editable = [line for line in pip if line.startswith("-e .")]
    assert len(editable) == 1, f"environment.yml installs the package once, editable: {pip}"
    extras = re.fullmatch(r"-e \.(?:\[([\w,-]+)\])?", editable[0]).group(1)
    extras = extras.split(",") if extras else []
    assert "test" in extras  # `make test` works in the environment
    declared = list(project["dependencies"]) + [r for extra in extras for r in project["optional-dependencies"][extra]]
    expected = {}
    for requirement in declared:
        name, bounds = split_requirement(requirement)
        expected[CONDA_NAMES.get(name, name)] = bounds
    expected["python"] = re.sub(r"\s+", "", project["requires-python"])
    listed = dict(split_requirement(entry) for entry in conda if entry != "pip")
    assert "pip" in conda  # the editable install of the package itself
    assert len(listed) == len([entry for entry in conda if entry != "pip"]), "a package is listed twice"
    assert listed == expected
