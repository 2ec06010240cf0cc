"""Shared fixtures. Golden files are read in place from ../shared/golden (never copied)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (the README's test command): two test processes share the machine's cores, so each
    # computes on one thread (before torch loads; its subprocesses inherit it), as two torch
    # processes at the default thread count oversubscribe the cores and slow each other many times over
    os.environ["OMP_NUM_THREADS"] = "1"

from magref.models import generation_defaults

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = (ROOT / ".." / "shared" / "golden").resolve()
EXAMPLES = ROOT / "src" / "magref" / "assets" / "examples"
# the bundled default model's settings (frame size, guidance, ...), read as `magref generate` reads them
DEFAULTS = generation_defaults(None)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never fetch from a hub


def pytest_collection_modifyitems(config, items):
    """The tests marked heavy run first (a stable sort keeps the rest in file order): under -n 2 a
    long test that started last would finish alone while the other process idles."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def golden(*parts) -> Path:
    path = GOLDEN.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: the parity tests need ../shared/golden beside the project")
    return path


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as a crash would (torchrun's workers and
    `prepare --workers` children run in sessions of their own, so a process group is not enough)."""
    import contextlib
    import signal

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += [int(c) for c in subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def golden_canvas(case: dict) -> Path:
    """The case's official canvas for the installed Pillow: its LANCZOS downscale changed between
    12 and 13 (by one level in a few pixels), and the golden set has both (MANIFEST.md)."""
    import PIL

    major = int(PIL.__version__.split(".")[0])
    if major == 12:
        return golden("compose", "pillow12", case["canvas_png"])
    if major != 13:
        pytest.fail(f"Pillow {PIL.__version__}: the golden canvases exist for Pillow 12 and 13 only")
    return golden("compose", case["canvas_png"])


@pytest.fixture(scope="session")
def compose_cases():
    return json.loads(golden("compose", "cases.json").read_text())


@pytest.fixture(scope="session")
def tiny_pipe():
    from magref.tiny import tiny_random_pipeline

    return tiny_random_pipeline()


def run_cli(*args, cwd=None, timeout=300, isolated=False):
    """Run the CLI: returns (returncode, stdout, stderr).

    By default in this process, through the same `magref.cli.main` that `python -m magref.cli`
    calls: a fresh interpreter spends ~8 s importing torch, diffusers and transformers, ~50
    times over the suite. An exception that escapes `main` gives what the interpreter would:
    exit 1 and the traceback on stderr. `isolated=True` runs the real entry point in a
    subprocess, for tests of the entry point itself or of process-wide state; `timeout`
    applies to that subprocess only."""
    if isolated:
        proc = subprocess.run(
            [sys.executable, "-m", "magref.cli", *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return proc.returncode, proc.stdout, proc.stderr
    import contextlib
    import io
    import traceback

    from magref.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors, --help
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 - as the interpreter reports an uncaught one
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue(), err.getvalue()
