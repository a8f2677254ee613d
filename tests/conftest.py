"""Shared test set-up, and one rule for tests that need something outside the
Python environment (the bpy wheel, Debian's Blender and Xvfb, the bpy 4.2 LTS
environment): under CI (``CI=true``) a missing one FAILS the test; elsewhere
the test is skipped with a message saying what to install."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_tool(available: bool, what: str, install: str) -> None:
    """Fail (under CI) or skip (elsewhere) unless ``available``; ``install`` says how to get ``what``."""
    if available:
        return
    if in_ci():
        pytest.fail(f"CI must provide {what}: {install}")
    pytest.skip(f"needs {what}: {install}")


@pytest.fixture
def require():
    """``require(available, what, install)``: the rule above, for a test to call."""
    return require_tool
