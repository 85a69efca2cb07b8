"""The embedded server's patches of argilla-server internals (annotation/server/patches.py) apply to the
installed argilla-server: it is the version they were read from and every attribute they replace exists.
An upgrade of argilla-server fails here, loudly, instead of running stock unnoticed. (What each patch
keeps of Argilla's behaviour is tested through the server: tests/test_annotation_server.py, _bulk.py; the
SQLite adapter's one hand-off and the server's admission are also checked alone, in the server's venv.)"""

from __future__ import annotations

import json
import types

import pytest

from annotation.server import patches
from annotation.server.launcher import REPO_ROOT
from tests.conftest import in_server_venv


def test_every_patch_applies_to_the_installed_argilla_server() -> None:
    applied = in_server_venv("-m", "annotation.server.patches", "--check")
    assert applied.splitlines() == [f"applied {patch.__name__}" for patch in patches.PATCHES]


def test_a_patch_whose_target_is_gone_fails_instead_of_running_stock() -> None:
    module = types.ModuleType("argilla_server.somewhere")
    with pytest.raises(RuntimeError, match=r"argilla_server.somewhere.moved is gone: the patch was read from 2\.8\.0"):
        patches._replace(module, "moved", lambda: None)


def venv_check(check: str) -> dict:
    """One of tests/server_venv_checks.py's checks, run in the server venv."""
    return json.loads(in_server_venv(str(REPO_ROOT / "tests" / "server_venv_checks.py"), check).splitlines()[-1])


def test_sqlite_statements_in_one_hop_answer_as_the_stock_adapter() -> None:
    answers = venv_check("one-hop")
    assert answers["patched"] == answers["stock"]
    assert answers["stock"] == [
        ["insert", 1, 1],
        ["executemany", 2],
        ["select", ["id", "name"], [[1, "a"], [2, "b"], [3, "c"]]],
        ["empty", []],
        ["update", 2],
        ["integrity-error", "IntegrityError"],
        ["server-side", ["a", "b!", "c!"]],
    ]


def test_admission_lets_in_at_most_the_limit_first_come_first_served() -> None:
    admitted = venv_check("admission")
    assert admitted["1"]["most_inside"] == 1
    assert admitted["3"]["most_inside"] == 3
    for limit in ("1", "3"):
        assert admitted[limit]["order"] == list(range(12))
    assert admitted["1"]["lifespan_most_inside"] == 3  # only HTTP requests wait their turn
