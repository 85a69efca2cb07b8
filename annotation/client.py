"""Which Argilla server the commands talk to, and the one-line errors when it cannot be reached.

In order: `api_url`/`api_key_file` given by the caller (config keys `argilla.api_url`,
`argilla.api_key_file`), else `ARGILLA_API_URL` + `ARGILLA_API_KEY` (an external Argilla, e.g.
production on PostgreSQL + Elasticsearch), else the embedded server started by
`python -m annotation server start` (its URL and owner key file come from its status).
The key is never printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.cli import UserError

if TYPE_CHECKING:
    import argilla as rg

START_HINT = (
    "start the embedded one with `python -m annotation server start`, or set ARGILLA_API_URL and ARGILLA_API_KEY"
)


def _local_server() -> tuple[str, str]:
    """URL and owner key of the embedded server, from `python -m annotation server status --json`."""
    done = subprocess.run(
        [sys.executable, "-m", "annotation", "server", "status", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        status: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        status = {}
    key_file = status.get("api_key_file")
    if not status.get("url") or not status.get("healthy") or not key_file:
        raise UserError(f"no Argilla server is running: {START_HINT}")
    return str(status["url"]), _read_key(Path(key_file))


def _read_key(path: Path) -> str:
    try:
        key = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as err:
        raise UserError(f"cannot read the API key file {path}: {err.strerror}") from None
    if not key:
        raise UserError(f"the API key file {path} is empty")
    return key


def credentials(api_url: str | None = None, api_key_file: str | None = None) -> tuple[str, str]:
    if api_url:
        key = _read_key(Path(api_key_file)) if api_key_file else os.environ.get("ARGILLA_API_KEY")
        if not key:
            raise UserError(f"no API key for {api_url}: set ARGILLA_API_KEY or the config key argilla.api_key_file")
        return api_url, key
    if os.environ.get("ARGILLA_API_URL"):
        key = os.environ.get("ARGILLA_API_KEY")
        if not key:
            raise UserError("ARGILLA_API_URL is set but ARGILLA_API_KEY is not: set both to use an external Argilla")
        return os.environ["ARGILLA_API_URL"], key
    return _local_server()


def connect(api_url: str | None = None, api_key_file: str | None = None) -> rg.Argilla:
    """A logged-in SDK client; unreachable server and rejected key are one-line `UserError`s."""
    import argilla as rg
    import httpx
    from argilla._exceptions import ArgillaCredentialsError

    url, key = credentials(api_url, api_key_file)
    # The SDK warns on every lookup that finds nothing; the commands turn those into their own errors.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"argilla\.")
    try:
        return rg.Argilla(api_url=url, api_key=key, timeout=120, retries=0)
    except ArgillaCredentialsError:
        raise UserError(f"the API key was rejected by {url}: check ARGILLA_API_KEY or the server's key file") from None
    except httpx.TransportError as err:
        raise UserError(f"no Argilla server answers at {url} ({type(err).__name__}): {START_HINT}") from None


def split_address(address: str) -> tuple[str, str]:
    """`workspace/dataset` (or `argilla://workspace/dataset`) -> (workspace, dataset)."""
    path = address.removeprefix("argilla://").split("?", 1)[0].strip("/")
    workspace, sep, name = path.partition("/")
    if not sep or not workspace or not name or "/" in name:
        raise UserError(f"expected workspace/dataset, got {address!r}")
    return workspace, name


def find_dataset(client: rg.Argilla, address: str) -> rg.Dataset:
    """The dataset at `workspace/dataset`, or a `UserError` naming what exists."""
    from argilla._exceptions import ForbiddenError

    workspace, name = split_address(address)
    try:
        found = client.workspaces(workspace)
        dataset = next((d for d in found.datasets if d.name == name), None) if found is not None else None
    except ForbiddenError:
        raise UserError(f"this API key may not read workspace {workspace!r} (403): ask an owner to add you") from None
    if found is None:
        raise UserError(
            f"workspace {workspace!r} not found (or this API key's user is not in it): "
            "create it with `python -m annotation create`"
        )
    if dataset is None:
        names = ", ".join(sorted(d.name for d in found.datasets)) or "none"
        raise UserError(
            f"dataset {name!r} not found in workspace {workspace!r} (it has: {names}); "
            "create it with `python -m annotation create`"
        )
    return dataset.get()
