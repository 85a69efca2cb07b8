"""annotation_ingest: records/s of `annotation push` vs the plain SDK loop, and pull + unify + export time.

    python -m bench.annotation_ingest            # 10,000 records each way, on the embedded server (~3 min)
    python -m bench.annotation_ingest --quick    # 1,000 records: a smoke test

Same server, same run, same instruction records, each side into its own fresh dataset:
- A: `annotation push` as the CLI runs it (`build_records`: column mapping and every check, then
  `send_records`: upserts of 500 by record id, two requests in flight);
- B: the SDK's documented loop, `dataset.records.log(rows)` with its defaults (batches of 256).
Target: A/B >= 2. Then 3 annotators' responses are logged on every record of A's dataset, and
`pull` (REST pages) + unify + export (a versioned HF dataset + JSONL + CSV) is timed: target < 5 s.
The server's RSS (server process and its children: rq worker, Redis) is sampled at idle and every
0.2 s during both ingests.

With ARGILLA_API_URL/ARGILLA_API_KEY set it measures that server (RSS then needs `--server_pid`);
otherwise it uses the embedded server under a temporary ANNOTATION_HOME, started and stopped here.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench.common import ROOT, Recorder, Verdict, loadavg

NAME = "annotation_ingest"
TARGET_RATIO = 2.0
TARGET_EXPORT_S = 5.0
ANNOTATORS = ("ann1", "ann2", "ann3")
WORDS = ("table", "order", "customer", "price", "city", "product", "total", "count", "average", "which", "many")


def instruction_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction pairs of a realistic size (a sentence in, a few sentences out)."""
    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    return [
        {
            "id": f"rec-{i}",
            "instruction": sentence(12),
            "context": sentence(20) if i % 3 == 0 else "",
            "response": " ".join(sentence(15) for _ in range(3)),
        }
        for i in range(count)
    ]


# ---------------------------------------------------------------------------- memory


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its descendants, in MB (from /proc, no extra package)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        stack += [int(child) for child in children]
    return total / 1024


class RssSampler:
    """Peak tree RSS of the server while a block runs (a thread samples every 0.2 s)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, 0.0, threading.Event()

    def sample(self) -> float:
        return sum(tree_rss_mb(pid) for pid in self.pids)

    @contextmanager
    def watch(self) -> Iterator[RssSampler]:
        self.peak = self.sample()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(0.2):
                self.peak = max(self.peak, self.sample())

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


# ---------------------------------------------------------------------------- the server


@contextmanager
def embedded_server(home: Path) -> Iterator[list[int]]:
    """Start the embedded server under `home`; yields the pids whose trees make up the server."""
    env = {**os.environ, "ANNOTATION_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "annotation", "server", "start"], cwd=ROOT, env=env, check=True)
    os.environ["ANNOTATION_HOME"] = str(home)
    try:
        yield server_pids()
    finally:
        subprocess.run([sys.executable, "-m", "annotation", "server", "stop"], cwd=ROOT, env=env, check=False)


def server_pids() -> list[int]:
    """The embedded server's processes (API, rq worker, Redis) as its launcher recorded them."""
    from annotation.server import Paths, State, home_dir

    return sorted(State.load(Paths(home_dir())).alive().values())


# ---------------------------------------------------------------------------- the two sides


def fresh_dataset(client: Any, workspace: str, label: str) -> Any:
    from annotation.create import create_dataset

    return create_dataset(client, f"{workspace}/{label}-{uuid.uuid4().hex[:6]}", "instruction")


def push_side(client: Any, rows: list[dict[str, str]], workspace: str) -> tuple[float, Any]:
    from datasets import Dataset

    from annotation.push import build_records, send_records

    dataset = fresh_dataset(client, workspace, "push")
    start = time.perf_counter()
    records = build_records(Dataset.from_list(rows), "instruction")
    created, _ = send_records(client, dataset, records)
    seconds = time.perf_counter() - start
    assert created == len(rows), f"push created {created} of {len(rows)}"
    return seconds, dataset


def sdk_side(client: Any, rows: list[dict[str, str]], workspace: str) -> tuple[float, Any]:
    dataset = fresh_dataset(client, workspace, "sdk")
    start = time.perf_counter()
    dataset.records.log([{k: v for k, v in row.items() if v} for row in rows])
    return time.perf_counter() - start, dataset


def record_count(client: Any, dataset: Any) -> int:
    response = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1})
    response.raise_for_status()
    return int(response.json()["total"])


def seed_responses(client: Any, dataset: Any, rows: list[dict[str, str]]) -> None:
    """3 annotators' submitted ratings (and some corrections) on every record, logged by the owner."""
    import argilla as rg

    from annotation.push import BATCH_SIZE

    users = []
    for name in ANNOTATORS:
        user = client.users(name) or rg.User(username=name, password=uuid.uuid4().hex, client=client).create()
        users.append(str(user.id))
    rng = random.Random(1)
    http = client.api.http_client
    for start in range(0, len(rows), BATCH_SIZE):
        items = []
        for row in rows[start : start + BATCH_SIZE]:
            responses = []
            for user_id in users:
                values: dict[str, Any] = {"rating": {"value": rng.randint(1, 5)}}
                if rng.random() < 0.2:
                    values["corrected_response"] = {"value": row["response"].upper()}
                responses.append({"user_id": user_id, "status": "submitted", "values": values})
            items.append({"external_id": row["id"], "responses": responses})  # no fields: an existing record
        http.put(f"/api/v1/datasets/{dataset.id}/records/bulk", json={"items": items}).raise_for_status()


def export_side(client: Any, dataset: Any, out: Path) -> tuple[float, dict[str, float], int]:
    from annotation.export import ExportConfig, build_export, report, write_versioned
    from annotation.pull import fetch_records

    config = ExportConfig()
    times: dict[str, float] = {}

    def timed(step: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = call()
        times[step] = round(time.perf_counter() - start, 3)
        return result

    records = timed("pull_s", lambda: fetch_records(client, dataset))
    result = timed("unify_s", lambda: build_export("instruction", records, config))
    summary = timed("agreement_s", lambda: report("bench", "instruction", records, result, config))
    timed("write_s", lambda: write_versioned(out, "bench", result.rows, summary, []))
    answers = sum(len(record.answers) for record in records)
    return sum(times.values()), times, answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.annotation_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 records: a smoke test, not a figure")
    parser.add_argument("--records", type=int, default=None, help="records per side (default 10,000; quick 1,000)")
    parser.add_argument("--server_pid", type=int, action="append", help="external server: pid(s) to sample RSS")
    parser.add_argument("--threads", type=int, default=None, help="accepted for `python -m bench`; unused here")
    args = parser.parse_args(argv)
    count = args.records or (1_000 if args.quick else 10_000)
    recorder = Recorder(NAME, args.quick)
    rows = instruction_rows(count)

    with tempfile.TemporaryDirectory(prefix="bench-annotation-") as tmp:
        tmp_path = Path(tmp)
        server: AbstractContextManager[list[int]]
        if os.environ.get("ARGILLA_API_URL"):
            server = nullcontext(args.server_pid or [])
        else:
            server = embedded_server(tmp_path / "home")
        with server as pids:
            from annotation.client import connect

            client = connect()
            workspace = f"bench-{uuid.uuid4().hex[:6]}"
            sampler = RssSampler(pids)
            time.sleep(2.0)
            idle_mb = sampler.sample()
            load = loadavg()
            with sampler.watch():
                sdk_s, sdk_dataset = sdk_side(client, rows, workspace)
            sdk_peak = sampler.peak
            with sampler.watch():
                push_s, push_dataset = push_side(client, rows, workspace)
            push_peak = sampler.peak
            counts = {"sdk": record_count(client, sdk_dataset), "push": record_count(client, push_dataset)}
            seed_responses(client, push_dataset, rows)
            export_s, export_steps, answers = export_side(client, push_dataset, tmp_path / "export")
            after_mb = sampler.sample()

    push_rate, sdk_rate = count / push_s, count / sdk_s
    export_status = "PASS" if export_s < TARGET_EXPORT_S else "MISS"
    note = (
        f"{count} records each; pull+unify+export of {count}x3 responses {export_s:.2f} s "
        f"(target < {TARGET_EXPORT_S:g} s, {export_status}); server RSS idle {idle_mb:.0f} MB, "
        f"ingest peak {max(sdk_peak, push_peak):.0f} MB"
    )
    verdict = Verdict(NAME, "annotation push", push_rate, "SDK records.log", sdk_rate, "rec/s", TARGET_RATIO, note)
    recorder.finish(
        verdict,
        {
            "records": count,
            "push": {"seconds": round(push_s, 2), "records_per_s": round(push_rate, 1), "stored": counts["push"]},
            "sdk": {"seconds": round(sdk_s, 2), "records_per_s": round(sdk_rate, 1), "stored": counts["sdk"]},
            "export": {
                "seconds": round(export_s, 3),
                "steps": export_steps,
                "responses": answers,
                "status": export_status,
            },
            "server_rss_mb": {
                "idle": round(idle_mb, 1),
                "sdk_ingest_peak": round(sdk_peak, 1),
                "push_ingest_peak": round(push_peak, 1),
                "after": round(after_mb, 1),
                "pids": pids,
            },
            "loadavg_start": load,
            "order": "SDK first, then push (a fresh dataset each)",
        },
    )


if __name__ == "__main__":
    main()
