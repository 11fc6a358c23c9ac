"""The architecture holds by construction: the import contract (.importlinter) is kept, it
catches a wrong import when one is made, and the repository stands on its own."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO

PACKAGES = ("zlh", "core", "notifications", "edge", "lifecycle", "reconciler", "observability",
            "devstack", "bench", "tests")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(root / ".importlinter"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the code (no venv, no git) to plant wrong imports in."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_repository_keeps_its_contracts():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    # a lower layer reaching up
    ("edge/services.py", "from lifecycle.models import ContainerInstance", "Apps are layered"),
    ("core/errors.py", "import notifications.services", "Apps are layered"),
    ("lifecycle/admin.py", "from reconciler.models import Finding", "Apps are layered"),
    # production code importing test code
    ("reconciler/diff.py", "from devstack import sim", "never imports the devstack"),
    # services reaching into the worker
    ("lifecycle/services/actions.py", "from lifecycle.worker import runner",
     "Only the tasks import the worker"),
])
def test_a_wrong_import_breaks_the_contract(tree: Path, module: str, line: str, contract: str):
    assert _lint(tree).returncode == 0  # the copy is clean before the planted import
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    result = _lint(tree)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if "BROKEN" in ln]
    assert any(contract in ln for ln in broken), result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout


def test_nothing_points_outside_the_repository():
    """The docs and the code stand on their own: no pointer to the design notes outside."""
    needles = ("../" + "shared", "DESIGN" + " §", "shared/" + "DESIGN")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = []
    for rel in tracked:
        path = REPO / rel
        if not path.is_file() or path.suffix in (".png", ".jpg"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{rel}: {n}" for n in needles if n in text]
    assert not offenders, offenders
