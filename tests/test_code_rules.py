"""The code keeps its own rules, so the architecture stays what README's "Code map" says:
ruff and mypy; the import tiers (import-linter contracts in pyproject.toml); short functions;
each RFC 9162 prefix written once; every lake key spelled in pipeline/lake/layout.py only; and
nobody outside pipeline/lake/ reading or writing lake bytes."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit
BIN = Path(sys.executable).parent
CODE = ("pipeline", "anchoring")
MAX_FUNCTION_LINES = 60


def _modules(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), ast.parse(path.read_text())


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_ruff_passes_with_the_import_boundaries() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "anchorlake", "pipeline", "anchoring", "dags", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_mypy_passes_on_pipeline_and_anchoring() -> None:
    proc = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_import_tiers_hold() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:]


def test_an_import_up_the_tiers_or_into_the_pure_core_breaks_the_contracts(tmp_path: Path) -> None:
    for name in CODE:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("build", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "pipeline" / "lake" / "layout.py", "a") as f:
        f.write("\nimport pipeline.stages  # noqa\n")
    with open(tmp_path / "pipeline" / "core" / "merkle.py", "a") as f:
        f.write("\nimport pyarrow  # noqa\n")
    with open(tmp_path / "anchoring" / "chain.py", "a") as f:
        f.write("\nimport pipeline.lake.storage  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "pipeline.lake.layout -> pipeline.stages" in proc.stdout
    assert "pipeline.core.merkle -> pyarrow" in proc.stdout
    assert "anchoring.chain -> pipeline.lake.storage" in proc.stdout


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno} lines)"  # type: ignore[operator]
            for path, tree in _modules(*CODE) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno > MAX_FUNCTION_LINES]  # type: ignore[operator]
    assert long == []


def test_each_rfc9162_prefix_is_written_once_beside_the_hashing_rule() -> None:
    found = [(path, node.value) for path, tree in _modules(*CODE) for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in (b"\x00", b"\x01")]
    assert sorted(found) == [("pipeline/core/merkle.py", b"\x00"), ("pipeline/core/merkle.py", b"\x01")]


LAKE_KEY = re.compile(r"(^|/)(incoming|raw|batches|receipts|state|deployments|private)/|"
                      r"(manifest|anchor|anchor-current|rewards-published|rewards-tree|sources|validation)\.json$|"
                      r"(tree\.bin|index\.parquet|quarantine\.parquet|rewards\.parquet|data/part-|data-docs/)")


def test_no_lake_key_is_spelled_outside_the_layout() -> None:
    spelled = []
    for path, tree in _modules(*CODE):
        if path == "pipeline/lake/layout.py":
            continue
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and LAKE_KEY.search(node.value)):
                spelled.append(f"{path}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_the_key_rule_would_catch_a_spelled_key() -> None:
    for spelled in ("batches/", "state/x/", "manifest.json", "/tree.bin", "receipts/d/000000/"):
        assert LAKE_KEY.search(spelled), spelled


LAKE_METHODS = {"read", "read_range", "open", "write", "write_file", "create", "list", "exists"}


def test_nobody_outside_the_lake_reads_or_writes_lake_bytes() -> None:
    """Outside pipeline/lake/, no code calls a Lake's methods: it goes through BatchFiles,
    sources and records, which check formats and SHA-256s."""
    calls = []
    for path, tree in _modules(*CODE, "dags"):
        if path.startswith("pipeline/lake/"):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LAKE_METHODS
                    and (isinstance(node.func.value, ast.Name) and node.func.value.id == "lake"
                         or isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "lake")):
                calls.append(f"{path}:{node.lineno} lake.{node.func.attr}")
    assert calls == []
