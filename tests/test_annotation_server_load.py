"""The embedded server under annotators, on each database it runs on (its SQLite file, and PostgreSQL through
`server start --database-url`): an annotator's queue, progress and metrics read from the queue index and the kept
counts (annotation/server/search_engine.py) agree with the records and responses, the queue is walked through its
index (EXPLAIN), a response's record events reach a webhook, and a kill -9 of the server under 50 annotators loses
no acknowledged response. The annotators are bench/annotation_load.py's, over plain REST as the UI's focus view
works. The PostgreSQL server runs on a throwaway cluster (tests/pg.py), started once for this module."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import argilla as rg
import httpx
import pytest

from bench.annotation_load import (
    QUEUE,
    RANKING,
    SUBMITTED,
    Tally,
    annotate,
    annotators,
    check_nothing_lost,
    comparison_records,
    new_dataset,
)
from tests.conftest import ArgillaServer, in_server_venv
from tests.pg import Cluster, throwaway_cluster

DATABASES = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def postgres_server(pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgillaServer]:
    """An embedded server of its own on the throwaway cluster (later starts keep using it: the saved URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ArgillaServer(tmp_path_factory.mktemp("argilla-pg") / "var", port)
    started = server.run_server("start", "--port", port, "--timeout", 300, "--database-url", pg_cluster.url())
    if started.returncode != 0:
        server.run_server("stop")
        pytest.fail(f"the server did not start on PostgreSQL:\n{started.stdout}{started.stderr}", pytrace=False)
    server.api_key = (server.var_dir / "owner-api-key").read_text().strip()
    server.password = (server.var_dir / "owner-password").read_text().strip()
    yield server
    server.run_server("stop")


@pytest.fixture(params=DATABASES)
def server(request: pytest.FixtureRequest) -> ArgillaServer:
    """The session's SQLite server, or this module's PostgreSQL one."""
    return request.getfixturevalue("argilla_server" if request.param == "sqlite" else "postgres_server")


def owner_client(server: ArgillaServer) -> rg.Argilla:
    return rg.Argilla(api_url=server.url, api_key=server.api_key)


def comparison_dataset(client: rg.Argilla, records: int) -> tuple[Any, Any]:
    """A comparison dataset (overlap 2) of `records` records in a new workspace: (dataset, workspace)."""
    from annotation.push import send_records

    workspace = f"load-{uuid.uuid4().hex[:6]}"
    dataset = new_dataset(client, workspace, "queue")
    send_records(client, dataset, list(comparison_records(records)))
    return dataset, client.workspaces(workspace)


def stored_responses(server: ArgillaServer, dataset_id: str) -> dict[str, list[dict]]:
    """record id -> its responses, as the owner lists them (the database, not the counts)."""
    headers = {"X-Argilla-Api-Key": server.api_key}
    url = f"{server.url}/api/v1/datasets/{dataset_id}/records"
    items = httpx.get(url, params={"limit": 1000, "include": "responses"}, headers=headers, timeout=60).json()["items"]
    return {item["id"]: item["responses"] for item in items}


def http(server: ArgillaServer, user: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/api/v1", headers={"X-Argilla-Api-Key": user["api_key"]}, timeout=60)


def submit(server: ArgillaServer, user: dict[str, str], record_ids: list[str]) -> None:
    with http(server, user) as h:
        for record_id in record_ids:
            answer = h.post(f"/records/{record_id}/responses", json={"values": RANKING, "status": "submitted"})
            assert answer.status_code == 201, answer.text


def own_order(user: dict[str, str], record_ids: list[str]) -> list[str]:
    """The records in the order the user walks them: by id, from a start drawn from the user's id (the search
    engine's `_queue_start`), so that annotators begin far apart. (Two users' walks coincide when both starts
    fall between the same two records: 1 in 30 here, so the test checks each order, not that they differ.)"""
    start = hashlib.blake2b(uuid.UUID(user["id"]).bytes, digest_size=16).hexdigest()
    ordered = sorted(record_ids, key=lambda record_id: uuid.UUID(record_id).hex)
    return [r for r in ordered if uuid.UUID(r).hex >= start] + [r for r in ordered if uuid.UUID(r).hex < start]


def test_queue_progress_and_metrics_follow_the_responses(server: ArgillaServer) -> None:
    """Two annotators, overlap 2: each one's queue shrinks by what it answers and by what both answered; the
    dataset's progress, each one's metrics and the users' progress match the responses stored."""
    client = owner_client(server)
    dataset, workspace = comparison_dataset(client, 30)
    alice, bob = annotators(client, workspace, 2)
    base = f"{server.url}/api/v1"
    owner = {"X-Argilla-Api-Key": server.api_key}

    def queue(user: dict[str, str], body: dict = QUEUE, limit: int = 1000) -> tuple[list[str], int]:
        with http(server, user) as h:
            page = h.post(f"/me/datasets/{dataset.id}/records/search", params={"limit": limit}, json=body).json()
        return [item["record"]["id"] for item in page["items"]], page["total"]

    alice_queue, total = queue(alice)
    bob_queue, _ = queue(bob)
    assert total == 30 and sorted(alice_queue) == sorted(bob_queue)
    assert alice_queue == own_order(alice, alice_queue) and bob_queue == own_order(bob, bob_queue)
    assert queue(alice, limit=5)[0] == alice_queue[:5]  # pages follow the same order

    submit(server, alice, alice_queue[:10])  # still pending for bob (overlap 2)
    bobs = alice_queue[5:8] + [r for r in bob_queue if r not in alice_queue[5:8]][-3:]
    submit(server, bob, bobs)
    completed = set(bobs) & set(alice_queue[:10])

    after, total = queue(alice)
    assert total == len(after) == 20 and after == alice_queue[10:]
    bob_after, bob_total = queue(bob)
    assert bob_total == len(bob_after) == 24 and bob_after == [r for r in bob_queue if r not in bobs]
    answered, answered_total = queue(alice, body=SUBMITTED)
    assert answered_total == 10 and sorted(answered) == sorted(alice_queue[:10])

    stored = stored_responses(server, str(dataset.id))
    really_completed = {rid for rid, responses in stored.items() if len(responses) >= 2}
    assert really_completed == completed
    progress = httpx.get(f"{base}/datasets/{dataset.id}/progress", headers=owner).json()
    assert (progress["total"], progress["completed"], progress["pending"]) == (30, len(completed), 30 - len(completed))
    with http(server, bob) as h:
        metrics = h.get(f"/me/datasets/{dataset.id}/metrics").json()["responses"]
        refused = h.post(f"/records/{bob_after[0]}/responses", json={"values": {"ranking": {"value": []}}})
    assert metrics == {"total": 30, "submitted": 6, "discarded": 0, "draft": 0, "pending": 24}
    assert refused.status_code == 422  # a ranking without its candidates: Argilla's own validation still runs
    users = httpx.get(f"{base}/datasets/{dataset.id}/users/progress", headers=owner).json()["users"]
    by_user = {user["username"]: user for user in users}
    assert by_user[alice["username"]]["completed"]["submitted"] == len(completed)
    assert by_user[alice["username"]]["pending"]["submitted"] == 10 - len(completed)
    assert by_user[bob["username"]]["completed"]["submitted"] == len(completed)

    # Deleting records takes their responses out of every count (the responses go by cascade).
    alice_alone = next(r for r in alice_queue[:10] if r not in completed)
    gone = [sorted(completed)[0], alice_alone, alice_queue[-1]]  # completed; alice alone; not alice
    deleted = httpx.delete(f"{base}/datasets/{dataset.id}/records", params={"ids": ",".join(gone)}, headers=owner)
    assert deleted.status_code == 204, deleted.text
    progress = httpx.get(f"{base}/datasets/{dataset.id}/progress", headers=owner).json()
    assert (progress["total"], progress["completed"]) == (27, len(completed) - 1)
    with http(server, alice) as h:
        metrics = h.get(f"/me/datasets/{dataset.id}/metrics").json()["responses"]
    assert metrics == {"total": 27, "submitted": 8, "discarded": 0, "draft": 0, "pending": 19}
    assert queue(alice)[1] == 19 and queue(alice, body=SUBMITTED)[1] == 8


def engine_statements(expression: str = "[Dialect.queue_page, Dialect.answered_page.format(statuses=':s0')]") -> list:
    """Statements as the engine runs them (read in the server venv, where the engine imports): by default the
    queue's."""
    script = (
        "import json; from annotation.server.dialects import Dialect\n"
        "from annotation.server.dialects.sqlite import SQLite\n"
        f"print(json.dumps({expression}))"
    )
    return json.loads(in_server_venv("-c", script))


QUEUE_PARAMS = {"window": 1, "limit": 1, "offset": 0, "s0": "submitted"}


def test_the_annotator_queue_is_read_from_an_index_on_sqlite(argilla_server: ArgillaServer) -> None:
    """EXPLAIN QUERY PLAN of the queue statements on the server's database: index searches only, no scan of
    `records` or `responses` (their time would grow with the dataset)."""
    params = {"ds": "0" * 32, "user": "1" * 32, "start": "8" * 32, **QUEUE_PARAMS}
    with sqlite3.connect(argilla_server.var_dir / "argilla.db") as db:
        for statement in engine_statements():
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
            scans = [step for step in plan if step.startswith("SCAN") and ("records" in step or "responses" in step)]
            assert scans == [], plan
            if "NOT EXISTS" in statement:
                assert any("annotation_ix_records_queue" in step for step in plan), plan


def test_a_records_status_counts_only_its_own_responses_on_sqlite(argilla_server: ArgillaServer) -> None:
    """The status statements (after each response; at each start) count a record's submitted responses through
    the index on the record, never through the one on status: that walked every submitted response of the
    database for each record (4.2 ms a submission at 25,000 responses; 129 s a start at 10^6 records)."""
    set_status, repair = engine_statements("[SQLite.set_status, SQLite.repair_statuses]")
    with sqlite3.connect(argilla_server.var_dir / "argilla.db") as db:
        for statement, params in ((set_status, {"id": "0" * 32, "now": "2026-01-01"}), (repair, {})):
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
            counted = [step for step in plan if step.startswith("SEARCH rs ")]
            assert counted and all("(record_id=?" in step for step in counted), plan
            assert not [step for step in plan if step.startswith("SCAN") and "records" in step], plan


def test_the_annotator_queue_is_read_from_an_index_on_postgresql(postgres_server: ArgillaServer, pg_cluster) -> None:
    """The same on PostgreSQL, with sequential scans priced out (its planner scans small tables whatever the
    indexes): a Seq Scan left in the plan is one no index can answer."""
    import psycopg2

    params = {
        "ds": str(uuid.UUID(int=0)),
        "user": str(uuid.UUID(int=1)),
        "start": str(uuid.UUID(int=8)),
        **QUEUE_PARAMS,
    }
    db = psycopg2.connect(pg_cluster.url())
    with db, db.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        for statement in engine_statements():
            typed = statement.replace(":ds", "%(ds)s::uuid").replace(":user", "%(user)s::uuid")
            typed = typed.replace(":start", "%(start)s::uuid").replace(":s0", "%(s0)s")
            for name in ("window", "limit", "offset"):
                typed = typed.replace(f":{name}", f"%({name})s")
            cursor.execute(f"EXPLAIN (FORMAT JSON) {typed}", params)
            plan = json.dumps(cursor.fetchone()[0])
            assert '"Seq Scan"' not in plan, plan
            if "NOT EXISTS" in statement:
                assert "annotation_ix_records_queue" in plan, plan
    db.close()


def test_the_postgresql_url_stays_private_and_a_start_for_another_database_is_one_line(
    postgres_server: ArgillaServer, pg_cluster: Cluster
) -> None:
    saved = postgres_server.var_dir / "database-url"
    assert saved.read_text().strip() == pg_cluster.url() and saved.stat().st_mode & 0o777 == 0o600
    status = postgres_server.run_server("status")
    assert status.returncode == 0 and "database: postgresql://pipelines:***@/postgres?host=" in status.stdout
    assert pg_cluster.password not in status.stdout
    other = postgres_server.run_server("start", "--database-url", "sqlite")
    assert other.returncode == 2 and other.stderr.startswith("error: a server with another database"), other.stderr
    assert pg_cluster.password not in other.stderr


def test_a_webhook_hears_the_records_completed_by_responses(server: ArgillaServer) -> None:
    """The status update after a response builds Argilla's record events only when a webhook listens
    (annotation/server/patches.py): this one listens, and hears each record the second annotator completes."""
    received: list[dict[str, Any]] = []

    class Listener(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    client = owner_client(server)
    dataset, workspace = comparison_dataset(client, 3)
    alice, bob = annotators(client, workspace, 2)
    with http(server, alice) as h:
        page = h.post(f"/me/datasets/{dataset.id}/records/search", json=QUEUE).json()
    records = [item["record"]["id"] for item in page["items"]]
    listener = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    owner = client.api.http_client
    url = f"http://127.0.0.1:{listener.server_port}/hook"
    hook = owner.post("/api/v1/webhooks", json={"url": url, "events": ["record.completed"]}).json()
    try:
        submit(server, alice, records)
        submit(server, bob, records[:2])
        deadline = time.monotonic() + 60
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # anything else would have come by now
    finally:
        owner.delete(f"/api/v1/webhooks/{hook['id']}")
        listener.shutdown()
    assert sorted((event["type"], event["data"]["id"]) for event in received) == sorted(
        ("record.completed", record_id) for record_id in records[:2]
    )


def test_kill_9_under_50_annotators_loses_no_acknowledged_response(server: ArgillaServer) -> None:
    client = owner_client(server)
    dataset, workspace = comparison_dataset(client, 400)
    crowd = annotators(client, workspace, 50)
    tally = Tally()
    work = threading.Thread(
        target=asyncio.run,
        args=(annotate(server.url, str(dataset.id), crowd, tally, until=time.monotonic() + 120),),
    )
    work.start()
    deadline = time.monotonic() + 120
    while tally.submissions < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    server_pid = json.loads((server.var_dir / "server.json").read_text())["processes"]["server"]["pid"]
    os.killpg(server_pid, signal.SIGKILL)  # the API and every process it started, mid-request
    work.join(150)
    assert tally.submissions >= 60 and tally.unanswered > 0  # killed while annotators were working

    restarted = server.start()
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    # Stored may exceed acknowledged: a response committed just before the kill was never answered.
    kept = check_nothing_lost(client, server.url, str(dataset.id), crowd, tally)
    assert kept["lost"] == 0 and kept["acknowledged"] == tally.submissions <= kept["stored"], kept
    stored = stored_responses(server, str(dataset.id))
    progress = httpx.get(
        f"{server.url}/api/v1/datasets/{dataset.id}/progress", headers={"X-Argilla-Api-Key": server.api_key}
    ).json()
    assert progress["completed"] == sum(len(responses) >= 2 for responses in stored.values())
