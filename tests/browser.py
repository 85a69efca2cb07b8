"""Headless Debian Chromium driven by Playwright for the UI tests: no browser download, the flags this
machine needs, and test-artifacts/ for the screenshots CI keeps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (containers), no GPU, and none of Chromium's own calls home (updates, sync, first-run pages).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; a clear failure where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.fail("/usr/bin/chromium is missing: scripts/setup.sh installs Debian's chromium", pytrace=False)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def artifact(name: str) -> str:
    """Where a screenshot goes (test-artifacts/<name>), the folder made on first use."""
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)
