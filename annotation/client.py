"""The one home of Argilla reads: which server the commands talk to (and the one-line errors when it
cannot be reached), a dataset by address, its kind, its users, and its records with every response.

In order: `api_url`/`api_key_file` given by the caller (config keys `argilla.api_url`,
`argilla.api_key_file`), else `ARGILLA_API_URL` + `ARGILLA_API_KEY` (an external Argilla, e.g.
production on PostgreSQL + Elasticsearch), else the embedded server started by
`python -m annotation server start` (its URL and owner key file come from its status).
The key is never printed.

Records are read in pages of 1,000 (the server's maximum), several pages at a time, straight from
the REST API: the SDK's record objects cost more than the transfer at this size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from annotation import schemas
from annotation.unify import Answer, PulledRecord
from pipelines.cli import UserError

if TYPE_CHECKING:
    import argilla as rg

PAGE_SIZE = 1000
PARALLEL_PAGES = 4
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


def dataset_exists(client: rg.Argilla, address: str) -> bool:
    workspace_name, name = split_address(address)
    workspace = client.workspaces(workspace_name)
    return workspace is not None and any(d.name == name for d in workspace.datasets)


def dataset_kind(dataset: rg.Dataset) -> str:
    """Which of the three kinds a dataset is, from its fields; a `UserError` for a foreign dataset."""
    names = [field.name for field in dataset.settings.fields]
    kind = schemas.kind_of_fields(names)
    if kind is None:
        raise UserError(
            f"dataset {dataset.name!r} was not made by `python -m annotation create` (its fields: {', '.join(names)}); "
            f"expected the fields of one of {', '.join(schemas.KINDS)}"
        )
    return kind


def usernames(client: rg.Argilla) -> dict[str, str]:
    """user id -> username; ids stay ids for a caller who may not list users (not an owner)."""
    response = client.api.http_client.get("/api/v1/users")
    if response.status_code != 200:
        return {}
    return {item["id"]: item["username"] for item in response.json()["items"]}


def _pulled(item: dict[str, Any], users: dict[str, str]) -> PulledRecord:
    answers = [
        Answer(
            user=users.get(response["user_id"], response["user_id"]),
            status=response["status"],
            values={name: value.get("value") for name, value in (response.get("values") or {}).items()},
            updated_at=response.get("updated_at") or response.get("inserted_at") or "",
        )
        for response in item.get("responses") or []
    ]
    return PulledRecord(
        id=str(item.get("external_id") or item["id"]),
        fields=item.get("fields") or {},
        metadata=item.get("metadata") or {},
        answers=answers,
    )


def fetch_records(client: rg.Argilla, dataset: rg.Dataset) -> list[PulledRecord]:
    """All records of `dataset` with their responses, in insertion order."""
    http = client.api.http_client
    url = f"/api/v1/datasets/{dataset.id}/records"

    def page(offset: int) -> dict[str, Any]:
        response = http.get(url, params={"offset": offset, "limit": PAGE_SIZE, "include": ["responses"]})
        if response.status_code == 403:
            raise UserError(f"this API key may not read the records of {dataset.name!r} (403): use an owner's key")
        response.raise_for_status()
        return response.json()

    first = page(0)
    total = int(first["total"])
    items = list(first["items"])
    with (
        tqdm(total=total, desc=f"Pulling {dataset.name}", unit="record", disable=total <= PAGE_SIZE) as bar,
        ThreadPoolExecutor(PARALLEL_PAGES) as pool,
    ):
        bar.update(len(items))
        for result in pool.map(page, range(PAGE_SIZE, total, PAGE_SIZE)):
            items += result["items"]
            bar.update(len(result["items"]))
    users = usernames(client)
    return [_pulled(item, users) for item in items]


def record_total(client: rg.Argilla, dataset: rg.Dataset) -> int:
    response = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1})
    response.raise_for_status()
    return int(response.json()["total"])


def pull_dataset(address: str) -> tuple[str, list[PulledRecord]]:
    """(kind, records) of the dataset at `workspace/dataset`."""
    split_address(address)  # a malformed address is reported before connecting
    client = connect()
    dataset = find_dataset(client, address)
    return dataset_kind(dataset), fetch_records(client, dataset)
