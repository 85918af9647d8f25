"""The code keeps its own rules: ruff (import boundaries: web3 only in anchoring/chain.py,
boto3 only in pipeline/storage.py and the service harness) and mypy on pipeline/ and anchoring/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit
BIN = Path(sys.executable).parent


def test_ruff_passes_with_the_import_boundaries() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "pipeline", "anchoring", "dags", "tests"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_mypy_passes_on_pipeline_and_anchoring() -> None:
    proc = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
