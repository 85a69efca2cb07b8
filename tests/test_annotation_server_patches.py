"""The embedded server's patches of argilla-server internals (annotation/server/patches.py) apply to the
installed argilla-server: it is the version they were read from and every attribute they replace exists.
An upgrade of argilla-server fails here, loudly, instead of running stock unnoticed. (What each patch
keeps of Argilla's behaviour is tested through the server: tests/test_annotation_server.py, _bulk.py.)"""

from __future__ import annotations

import subprocess
import types

import pytest

from annotation.server import patches
from annotation.server.launcher import REPO_ROOT, ensure_server_venv


def test_every_patch_applies_to_the_installed_argilla_server() -> None:
    python = ensure_server_venv()
    done = subprocess.run(
        [str(python), "-m", "annotation.server.patches", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"applied {patch.__name__}" for patch in patches.PATCHES]


def test_a_patch_whose_target_is_gone_fails_instead_of_running_stock() -> None:
    module = types.ModuleType("argilla_server.somewhere")
    with pytest.raises(RuntimeError, match=r"argilla_server.somewhere.moved is gone: the patch was read from 2\.8\.0"):
        patches._replace(module, "moved", lambda: None)
