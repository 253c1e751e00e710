#!/usr/bin/env python3
"""One command for each job, on a machine with only Python 3.10+ and pip.

    python run.py check    # set up .venv, install equivit, run `equivit check` (stock timm vs converted)
    python run.py demo     # set up .venv, install equivit, show anchoring on the patch tokens of a ViT
    python run.py test     # set up .venv, install equivit with test extras, run ruff and pytest
    python run.py test --slow   # also the slow sweeps (inductor compiles, model sweeps)
    python run.py bench    # set up .venv, run the benchmarks in benchmarks/
    python run.py docs     # set up .venv, build the documentation site (mkdocs build --strict) into site/
    python run.py gpu      # set up .venv, run the CUDA tests and GPU benchmarks (benchmarks/gpu_check.sh)

The virtual environment lives in .venv next to this file; it is created on first use and
updated whenever pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command: str | Path) -> None:
    """Run a command from the repository root; exit with its status if it fails."""
    print("+", " ".join(str(part) for part in command), flush=True)
    status = subprocess.call([str(part) for part in command], cwd=ROOT)
    if status:
        raise SystemExit(status)


def ensure_environment(extras: str) -> None:
    """Create .venv and install the package with ``extras`` unless already done for this pyproject."""
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(
        f"Setting up {VENV.name} with equivit[{extras}]: the first time this downloads PyTorch (a few GB) and "
        "takes about 3 to 10 minutes, with no output while pip works; later runs reuse it.",
        flush=True,
    )
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    stamp.write_text(digest)


def main(argv: list[str]) -> None:
    """Dispatch ``check``, ``demo``, ``test``, ``bench``, ``docs`` or ``gpu``."""
    job = argv[0] if argv else "check"
    rest = argv[1:]
    if job == "check":
        ensure_environment("photos,fast")
        run(PYTHON, "-m", "equivit.cli", "check", *rest)
    elif job == "demo":
        ensure_environment("photos,fast")
        run(PYTHON, "-m", "equivit.demo", *rest)
    elif job == "test":
        ensure_environment("test")
        run(PYTHON, "-m", "ruff", "check", "src", "tests", "benchmarks", "run.py", "mkdocs_hooks.py")
        slow = ["-m", "not cuda"] if "--slow" in rest else []
        # One worker per core (at most 4): compiles and hypothesis searches are single-threaded.
        workers = ["-n", "auto", "--maxprocesses", "4"]
        durations = ["--durations", "25"]  # the slowest tests, to keep the default run short
        run(PYTHON, "-m", "pytest", "-q", *workers, *durations, *slow, *[arg for arg in rest if arg != "--slow"])
    elif job == "docs":
        ensure_environment("docs")
        os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
        run(PYTHON, "-m", "mkdocs", "build", "--strict", *rest)
    elif job == "bench":
        ensure_environment("test,bench")
        run(PYTHON, "benchmarks/bench_anchor.py", *rest)
    elif job == "gpu":
        ensure_environment("test,bench")
        run("bash", "benchmarks/gpu_check.sh", *rest)
    else:
        raise SystemExit(f"unknown job {job!r}: use check, demo, test, bench, docs or gpu")


if __name__ == "__main__":
    main(sys.argv[1:])
