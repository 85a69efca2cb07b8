"""The embedded Argilla server: start/status/stop/start keeps data, kill -9 keeps acknowledged responses,
one-line errors (Redis port taken, server not running, a database URL that is not PostgreSQL), no secrets in
logs, and the project's search engine answering the SDK's text search and metadata filters, and passing
argilla-server's own search-engine tests on SQLite and PostgreSQL. One server for the session (`argilla_server`;
the PostgreSQL server's tests are in tests/test_annotation_server_load.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import argilla as rg
import httpx
import psutil
import pytest

from tests.conftest import cli_command, cli_env
from tests.pg import throwaway_cluster

REPO_ROOT = Path(__file__).resolve().parents[1]


def one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Failed as users should see it: exit 2, one `error:` line, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def server_cli(home: Path, *args: object, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m annotation server ...` for another var dir (ARGILLA_API_URL/KEY only where given)."""
    base = {k: v for k, v in cli_env().items() if k not in ("ARGILLA_API_URL", "ARGILLA_API_KEY")}
    return subprocess.run(
        cli_command("annotation", "server", *args),
        cwd=REPO_ROOT,
        env={**base, "ANNOTATION_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def service_pids(var_dir: Path) -> list[int]:
    """The launched processes and their children (the worker's scheduler and job processes)."""
    state = json.loads((var_dir / "server.json").read_text())
    pids = []
    for proc in state["processes"].values():
        pids.append(proc["pid"])
        pids += [child.pid for child in psutil.Process(proc["pid"]).children(recursive=True)]
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def client(argilla_server) -> rg.Argilla:
    return rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)


def make_dataset(client: rg.Argilla, texts: list[str]) -> rg.Dataset:
    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["good", "bad"])]
    )
    name = f"t-{uuid.uuid4().hex[:8]}"
    dataset = rg.Dataset(name=name, workspace="argilla", settings=settings, client=client).create()
    dataset.records.log([{"text": text} for text in texts])
    return dataset


# ---------------------------------------------------------------------------- life cycle


def test_status_is_healthy_and_the_ui_loads(argilla_server) -> None:
    done = argilla_server.run_server("status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["healthy"] is True
    assert status["url"] == argilla_server.url
    key_file = Path(status["api_key_file"])
    assert key_file.read_text().strip() == argilla_server.api_key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "argilla" in [user["username"] for user in status["users"]]

    page = httpx.get(f"{argilla_server.url}/", timeout=30)
    assert page.status_code == 200
    assert "<title>Argilla</title>" in page.text
    me = httpx.get(f"{argilla_server.url}/api/v1/me", headers={"X-Argilla-Api-Key": argilla_server.api_key}, timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "argilla"
    assert re.fullmatch(r"total;dur=\d+(\.\d+)?", me.headers["server-timing"])  # Argilla's header, kept

    again = argilla_server.run_server("start")
    assert again.returncode == 0 and "already running" in again.stdout


def test_stop_leaves_no_process_and_start_keeps_the_data(argilla_server, client) -> None:
    dataset = make_dataset(client, ["kept across a restart", "and this one"])
    pids = service_pids(argilla_server.var_dir)
    assert len(pids) >= 3

    stopped = argilla_server.run_server("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if alive(pid)] == []
    with socket.socket() as probe:  # nothing listens on the server's port any more
        assert probe.connect_ex(("127.0.0.1", argilla_server.port)) != 0
    one_error_line(argilla_server.run_server("status"), "python -m annotation server start")

    started = argilla_server.start()
    assert started.returncode == 0, started.stdout + started.stderr
    assert "shown once" not in started.stdout  # same owner and key: the password shows on the first start only
    again = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    kept = again.datasets(name=dataset.name, workspace="argilla")
    assert sorted(r.fields["text"] for r in kept.records) == ["and this one", "kept across a restart"]


def test_kill_9_mid_annotation_keeps_every_acknowledged_response(argilla_server, client) -> None:
    dataset = make_dataset(client, [f"record {i}" for i in range(200)])
    headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    records_url = f"{argilla_server.url}/api/v1/datasets/{dataset.id}/records"
    record_ids = [r["id"] for r in httpx.get(records_url, params={"limit": 1000}, headers=headers).json()["items"]]
    acknowledged: list[str] = []

    def annotate() -> None:
        with httpx.Client(base_url=argilla_server.url, headers=headers, timeout=30) as http:
            for record_id in record_ids:
                body = {"values": {"label": {"value": "good"}}, "status": "submitted"}
                try:
                    answer = http.post(f"/api/v1/records/{record_id}/responses", json=body)
                except httpx.TransportError:
                    return  # the server was killed
                if answer.status_code == 201:
                    acknowledged.append(record_id)

    annotator = threading.Thread(target=annotate)
    annotator.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    server_pid = json.loads((argilla_server.var_dir / "server.json").read_text())["processes"]["server"]["pid"]
    os.killpg(server_pid, signal.SIGKILL)  # the API and its server processes
    annotator.join(60)
    assert 10 <= len(acknowledged) < len(record_ids)  # killed mid-way

    restarted = argilla_server.start()
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "restarting" in restarted.stdout  # Redis and the worker were left behind by the kill
    owner_id = str(client.me.id)
    items = httpx.get(records_url, params={"limit": 1000, "include": "responses"}, headers=headers).json()["items"]
    stored = {r["id"] for r in items if any(resp["user_id"] == owner_id for resp in r["responses"])}
    assert set(acknowledged) <= stored


def test_two_starts_at_the_same_moment_start_one_server(tmp_path: Path) -> None:
    """Both exit 0: one starts the server, the other waits for it and says it is running (same URL)."""
    home = tmp_path / "var"
    base = {k: v for k, v in cli_env().items() if k not in ("ARGILLA_API_URL", "ARGILLA_API_KEY")}
    env = {**base, "ANNOTATION_HOME": str(home)}
    starts = [
        subprocess.Popen(
            cli_command("annotation", "server", "start"),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [start.communicate(timeout=300) for start in starts]
        assert [start.returncode for start in starts] == [0, 0], outputs
        winner = [out for out, _ in outputs if "Argilla is running at" in out]
        loser = [out for out, _ in outputs if out.startswith("already running at")]
        assert len(winner) == 1 and len(loser) == 1, outputs
        assert loser[0].strip().count("\n") == 0 and "at the same moment" in loser[0]
        url = winner[0].split("Argilla is running at ")[1].split()[0]
        assert loser[0].split()[3] == url
        assert sorted(json.loads((home / "server.json").read_text())["processes"]) == ["redis", "server", "worker"]
        assert httpx.get(f"{url}/api/v1/status", timeout=30).status_code == 200
    finally:
        server_cli(home, "stop")


def test_a_start_asking_for_another_port_is_one_line(argilla_server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        other = probe.getsockname()[1]
    done = argilla_server.run_server("start", "--port", other)
    one_error_line(done, "another port is already running at", argilla_server.url, "server stop")


def test_a_taken_redis_port_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = server_cli(tmp_path / "var", "start", "--redis-port", port)
    one_error_line(done, f"Redis port {port} is taken", "--redis-port")
    assert not (tmp_path / "var").exists()  # nothing written, nothing started


@pytest.mark.parametrize("flag", ["--processes", "--concurrency"])
def test_fewer_than_one_process_or_request_at_once_is_one_line_and_starts_nothing(tmp_path: Path, flag: str) -> None:
    one_error_line(server_cli(tmp_path / "var", "start", flag, 0), f"{flag} must be at least 1, got 0")
    assert not (tmp_path / "var").exists()


def test_status_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    one_error_line(server_cli(tmp_path / "var", "status"), "python -m annotation server start")
    as_json = server_cli(tmp_path / "var", "status", "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["healthy"] is False


def test_external_server_variables_start_nothing(argilla_server, tmp_path: Path) -> None:
    external = {"ARGILLA_API_URL": argilla_server.url, "ARGILLA_API_KEY": argilla_server.api_key}
    started = server_cli(tmp_path / "var", "start", **external)
    assert started.returncode == 0 and "external" in started.stdout
    assert not (tmp_path / "var").exists()
    status = json.loads(server_cli(tmp_path / "var", "status", "--json", **external).stdout)
    assert status["healthy"] is True and status["external"] is True and status["url"] == argilla_server.url


def test_the_owner_key_and_password_never_reach_the_logs(argilla_server, client) -> None:
    make_dataset(client, ["a record so the worker and server log something"])
    logs = list((argilla_server.var_dir / "logs").glob("*.log"))
    assert {path.stem for path in logs} >= {"server", "worker", "redis"}
    for path in logs:
        text = path.read_text(errors="replace")
        assert argilla_server.api_key not in text, path
        assert argilla_server.password not in text, path
    shown = argilla_server.run_server("logs", "-n", "1000").stdout
    assert "Uvicorn running" in shown
    assert argilla_server.api_key not in shown and argilla_server.password not in shown


def test_the_worker_recomputes_statuses_when_the_overlap_changes(argilla_server, client) -> None:
    """A background job (rq worker) that goes through the project's search engine."""
    dataset = make_dataset(client, ["one", "two", "three"])
    headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    with httpx.Client(base_url=f"{argilla_server.url}/api/v1", headers=headers, timeout=30) as http:
        first = http.get(f"/datasets/{dataset.id}/records").json()["items"][0]["id"]
        body = {"values": {"label": {"value": "good"}}, "status": "submitted"}
        assert http.post(f"/records/{first}/responses", json=body).status_code == 201
        assert dataset.progress()["completed"] == 1  # default overlap: one submission completes a record

        overlap = {"distribution": {"strategy": "overlap", "min_submitted": 2}}
        assert http.patch(f"/datasets/{dataset.id}", json=overlap).status_code == 200
        deadline = time.monotonic() + 60
        while dataset.progress()["completed"] != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    assert dataset.progress() == {"total": 3, "completed": 0, "pending": 3}


def test_bulk_upserts_keep_argillas_checks_and_statuses(argilla_server, client) -> None:
    """What annotation/server/patches.py's record patches must keep: a new record is checked (its fields, and its
    responses when it has some) as Argilla checks it, and each upserted record's status follows its submitted
    responses, whether it was just created, given a response, or updated without one."""
    dataset = make_dataset(client, ["seed"])
    headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    with httpx.Client(base_url=f"{argilla_server.url}/api/v1", headers=headers, timeout=30) as http:
        me = http.get("/me").json()["id"]
        submitted = [{"user_id": me, "status": "submitted", "values": {"label": {"value": "good"}}}]

        def upsert(*items: dict) -> httpx.Response:
            return http.put(f"/datasets/{dataset.id}/records/bulk", json={"items": list(items)})

        def statuses() -> dict[str, str]:
            records = http.get(f"/datasets/{dataset.id}/records", params={"limit": 100}).json()["items"]
            return {r["external_id"]: r["status"] for r in records if r["external_id"] in ("a", "b")}

        extra = upsert({"external_id": "a", "fields": {"text": "ok"}}, {"external_id": "b", "fields": {"other": "x"}})
        assert extra.status_code == 422
        assert "Record at position 1 is not valid because missing required value for field: 'text'" in extra.text
        bad = [{"user_id": me, "status": "submitted", "values": {"label": {"value": "ugly"}}}]
        refused = upsert({"external_id": "b", "fields": {"text": "b"}, "responses": bad})
        assert refused.status_code == 422 and "record does not have valid responses" in refused.text
        assert statuses() == {}

        created = upsert(
            {"external_id": "a", "fields": {"text": "a"}},
            {"external_id": "b", "fields": {"text": "b"}, "responses": submitted},
        )
        assert created.status_code == 200, created.text
        assert [(r["external_id"], r["status"], len(r["responses"])) for r in created.json()["items"]] == [
            ("a", "pending", 0),
            ("b", "completed", 1),
        ]
        answered = upsert({"external_id": "a", "responses": submitted}, {"external_id": "b", "fields": {"text": "c"}})
        assert answered.status_code == 200, answered.text
        assert [(r["status"], r["fields"]["text"]) for r in answered.json()["items"]] == [
            ("completed", "a"),
            ("completed", "c"),
        ]
        assert statuses() == {"a": "completed", "b": "completed"}


# ---------------------------------------------------------------------------- the search engine


def test_text_search_and_metadata_filters_through_the_sdk(argilla_server, client) -> None:
    metadata = [rg.TermsMetadataProperty(name="topic"), rg.IntegerMetadataProperty(name="year")]
    dataset = rg.Dataset(
        name=f"search-{uuid.uuid4().hex[:8]}",
        workspace="argilla",
        settings=rg.Settings(
            fields=[rg.TextField(name="text")],
            questions=[rg.LabelQuestion(name="label", labels=["good", "bad"])],
            metadata=metadata,
        ),
        client=client,
    ).create()
    rows = [
        ("The cat sat on the mat", "animals", 2001),
        ("A dog chased the cat", "animals", 2010),
        ("Stock markets fell sharply", "finance", 2010),
        ("The central bank raised rates", "finance", 2020),
    ]
    dataset.records.log([{"text": t, "topic": topic, "year": year} for t, topic, year in rows])

    def texts(query: rg.Query) -> list[str]:
        return sorted(r.fields["text"] for r in dataset.records(query=query))

    assert texts(rg.Query(query="cat")) == ["A dog chased the cat", "The cat sat on the mat"]
    assert texts(rg.Query(query="cat -dog")) == ["The cat sat on the mat"]
    assert texts(rg.Query(query="rates | markets")) == ["Stock markets fell sharply", "The central bank raised rates"]
    assert texts(rg.Query(filter=rg.Filter(("metadata.topic", "==", "finance")))) == [
        "Stock markets fell sharply",
        "The central bank raised rates",
    ]
    in_2010s = rg.Filter([("metadata.year", ">=", 2010), ("metadata.year", "<=", 2019)])
    assert texts(rg.Query(filter=in_2010s)) == ["A dog chased the cat", "Stock markets fell sharply"]
    both = rg.Query(query="the", filter=rg.Filter(("metadata.topic", "==", "animals")))
    assert texts(both) == ["A dog chased the cat", "The cat sat on the mat"]


def test_a_database_url_other_than_postgresql_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    done = server_cli(tmp_path / "var", "start", "--database-url", "mysql://ml:s3cret@db.internal/argilla")
    one_error_line(done, "--database-url takes a postgresql:// URL or `sqlite`", "mysql://ml:***@db.internal")
    assert "s3cret" not in done.stderr and not (tmp_path / "var").exists()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_argilla_servers_own_search_engine_tests_pass(database: str) -> None:
    """`python -m annotation.server.conformance`: argilla-server 2.8.0's 120 search-engine tests against the
    project's engine, on each database it runs on: a throwaway SQLite file, a throwaway PostgreSQL cluster
    (tests/pg.py). The sdist is downloaded on first use; ~35 s a database. The 29 skipped ones assert
    Elasticsearch internals (index mappings, document layout), each named with its reason."""
    with contextlib.ExitStack() as stack:
        flags = []
        if database == "postgresql":
            flags = ["--database-url", stack.enter_context(throwaway_cluster()).url()]
        done = subprocess.run(
            cli_command("annotation.server.conformance", *flags),
            cwd=REPO_ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
    # The first run on a machine also prints "conformance: downloading ..." and "installing ..." lines.
    summary = [line for line in done.stdout.splitlines() if re.match(r"conformance: \d+/\d+ passed", line)]
    assert done.returncode == 0 and summary, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary[0] == "conformance: 91/120 passed, 0 failed, 29 skipped", summary[0]
