"""External tools tests depend on: a missing one FAILS the run in CI (CI=true), and only skips
a developer's local run. A skipped test is not a pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """The path of an external binary (sipp, sox, espeak-ng, ...), or fail/skip the test."""
    path = shutil.which(name)
    if path is None:
        msg = f"required tool {name!r} is not installed (not on PATH)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)  # outside CI only
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` (an installed package, a built file), or fail (CI) / skip (locally) the test,
    saying `what` installs it."""
    if not path.exists():
        msg = f"{path} is missing ({what})"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)  # outside CI only
    return path
