"""The installed shape (README "Layout"): one top-level name, ``pumpguard``.

The folders ``protocol/``, ``firmware_sim/`` and ``host/`` are installed as
``pumpguard.protocol``, ``pumpguard.firmware_sim`` and ``pumpguard.host``.  A
generic top-level ``protocol`` in site-packages would clash with the PyPI
distribution of that name and with any ``protocol.py`` in a user's directory.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pumpguard

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("protocol", "firmware_sim", "host")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -I: isolated mode, so neither the checkout nor PYTHONPATH is on sys.path.
    return subprocess.run(  # noqa: S603 -- our own interpreter, fixed arguments
        [sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_generic_names_do_not_import_but_pumpguard_does(tmp_path: Path) -> None:
    # A user's own protocol.py in the working directory must not matter.
    (tmp_path / "protocol.py").write_text("X = 1\n")
    ok = _python("import pumpguard.host.client, pumpguard.firmware_sim.pump", tmp_path)
    assert ok.returncode == 0, ok.stderr
    for part in ("host", "firmware_sim"):
        refused = _python(f"import {part}", tmp_path)
        assert "ModuleNotFoundError" in refused.stderr, part


def test_version_matches_the_distribution_metadata() -> None:
    assert pumpguard.__version__ == importlib.metadata.version("pumpguard")


def _top_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("folder", [*PARTS, "tests", "bench"])
def test_no_module_imports_a_part_by_its_folder_name(folder: str) -> None:
    """``import protocol`` works from a checkout by accident; never installed."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _top_level_imports(path)
        if name.split(".")[0] in PARTS
    ]
    assert offenders == []


def test_the_wheel_holds_only_pumpguard(tmp_path: Path) -> None:
    built = subprocess.run(  # noqa: S603 -- our own interpreter, fixed arguments
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("pumpguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"pumpguard"}
    for part in PARTS:
        assert f"pumpguard/{part}/__init__.py" in names
        assert f"pumpguard/{part}/py.typed" in names
    assert "pumpguard/__init__.py" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
