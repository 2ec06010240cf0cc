"""Shared fixtures. Golden files are read in place from ../shared/golden (never copied)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = (ROOT / ".." / "shared" / "golden").resolve()
EXAMPLES = ROOT / "src" / "magref" / "assets" / "examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never fetch from a hub


def golden(*parts) -> Path:
    path = GOLDEN.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: the parity tests need ../shared/golden beside the project")
    return path


@pytest.fixture(scope="session")
def compose_cases():
    return json.loads(golden("compose", "cases.json").read_text())


@pytest.fixture(scope="session")
def tiny_pipe():
    from magref.tiny import tiny_random_pipeline

    return tiny_random_pipeline()


def run_cli(*args, cwd=None, timeout=300):
    """Run the installed CLI in a subprocess: returns (returncode, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "magref.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return proc.returncode, proc.stdout, proc.stderr
