"""annotation_ingest: records/s of `annotation push` vs the plain SDK loop, and pull + unify + export time.

    python -m bench.annotation_ingest            # 10,000 records each way, on the embedded server (~3 min)
    python -m bench.annotation_ingest --quick    # 1,000 records: a smoke test

Same server, same run, same instruction records, each run into its own fresh dataset, in the order
B A A B (so a change of load during the run weighs on both sides alike), after an untimed warm-up
of 1,000 records each way:
- A: `annotation push` as the CLI runs it (`build_records`: column mapping and every check, then
  `send_records`: upserts of 500 by record id, two requests in flight, answers not decompressed);
- B: the SDK's documented loop, `dataset.records.log(rows)` with its defaults: record objects
  first, then batches of 256 one at a time, each answer parsed back into record objects.
Both send the same upserts to the same endpoint, so the server's work per record is the same; what A
saves is B's client work, which B does while the server waits. Target: A/B >= 2 (records/s over
both runs of a side). Then 3 annotators' responses are logged on every record of A's first
dataset, and `pull` (REST pages) + unify + export (a versioned HF dataset + JSONL + CSV) is timed
three times (the median counts): target < 5 s. The server's memory (server process and its children:
rq worker, Redis) is sampled at idle and every 0.2 s during the ingests, as RSS and as PSS (RSS
counts pages shared between processes once per process; PSS splits them).

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
WARM_UP = 1_000  # records per side sent before the timed runs
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


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of `pid` and all its descendants, in MB (from /proc, no extra package)."""
    rss = pss = 0
    stack, seen = [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        sizes = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.endswith("kB")}
        rss, pss = rss + sizes.get("Rss", 0), pss + sizes.get("Pss", 0)
        stack += [int(child) for child in children]
    return rss / 1024, pss / 1024


class MemorySampler:
    """Peak tree RSS and PSS of the server while a block runs (a thread samples every 0.2 s)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, (0.0, 0.0), threading.Event()

    def sample(self) -> tuple[float, float]:
        sizes = [tree_memory_mb(pid) for pid in self.pids]
        return sum(rss for rss, _ in sizes), sum(pss for _, pss in sizes)

    @contextmanager
    def watch(self) -> Iterator[MemorySampler]:
        self.peak = self.sample()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(0.2):
                rss, pss = self.sample()
                self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


# ---------------------------------------------------------------------------- the server


@contextmanager
def embedded_server(home: Path, *start_args: str) -> Iterator[list[int]]:
    """Start the embedded server under `home` (`start_args`: more `server start` flags); yields the pids whose
    trees make up the server."""
    env = {**os.environ, "ANNOTATION_HOME": str(home)}
    start = [sys.executable, "-m", "annotation", "server", "start", *start_args]
    subprocess.run(start, cwd=ROOT, env=env, check=True)
    os.environ["ANNOTATION_HOME"] = str(home)
    try:
        yield server_pids()
    finally:
        subprocess.run([sys.executable, "-m", "annotation", "server", "stop"], cwd=ROOT, env=env, check=False)


def server_pids() -> list[int]:
    """The embedded server's processes (API, rq worker, Redis) as its launcher recorded them."""
    from annotation.server.launcher import Paths, State, home_dir

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
    from annotation.client import fetch_records
    from annotation.export import ExportConfig, build_export, report, write_versioned

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


def as_mb(sizes: tuple[float, float]) -> dict[str, float]:
    return {"rss": round(sizes[0], 1), "pss": round(sizes[1], 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.annotation_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 records: a smoke test, not a figure")
    parser.add_argument("--records", type=int, default=None, help="records per run (default 10,000; quick 1,000)")
    parser.add_argument("--server_pid", type=int, action="append", help="external server: pid(s) to sample memory")
    parser.add_argument("--threads", type=int, default=None, help="accepted for `python -m bench`; unused here")
    args = parser.parse_args(argv)
    count = args.records or (1_000 if args.quick else 10_000)
    recorder = Recorder(NAME, args.quick)
    rows = instruction_rows(count)
    sides: dict[str, Callable[[Any, list[dict[str, str]], str], tuple[float, Any]]] = {
        "sdk": sdk_side,
        "push": push_side,
    }

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
            sampler = MemorySampler(pids)
            time.sleep(2.0)
            idle = sampler.sample()
            load = loadavg()
            runs: list[dict[str, Any]] = []
            datasets: dict[str, list[Any]] = {"sdk": [], "push": []}
            peaks: dict[str, tuple[float, float]] = {"sdk": (0.0, 0.0), "push": (0.0, 0.0)}
            for side in ("sdk", "push"):  # warm-up, not timed: a fresh server answers its first bulks slower
                sides[side](client, rows[:WARM_UP], workspace)
            for side in ("sdk", "push", "push", "sdk"):
                with sampler.watch():
                    seconds, dataset = sides[side](client, rows, workspace)
                peaks[side] = (max(peaks[side][0], sampler.peak[0]), max(peaks[side][1], sampler.peak[1]))
                datasets[side].append(dataset)
                stored = record_count(client, dataset)
                assert stored == count, f"{side} stored {stored} of {count}"
                runs.append({"side": side, "seconds": round(seconds, 2), "records_per_s": round(count / seconds, 1)})
            start = time.perf_counter()
            seed_responses(client, datasets["push"][0], rows)
            seed_s = time.perf_counter() - start
            exports = [export_side(client, datasets["push"][0], tmp_path / "export") for _ in range(3)]
            after = sampler.sample()

    seconds = {side: sum(run["seconds"] for run in runs if run["side"] == side) for side in sides}
    push_rate, sdk_rate = 2 * count / seconds["push"], 2 * count / seconds["sdk"]
    export_s, export_steps, answers = sorted(exports, key=lambda e: e[0])[1]  # the median of three
    export_status = "PASS" if export_s < TARGET_EXPORT_S else "MISS"
    note = (
        f"2x{count} records each (B A A B); pull+unify+export of {count}x3 responses {export_s:.2f} s "
        f"(median of 3; target < {TARGET_EXPORT_S:g} s, {export_status}); server RSS idle {idle[0]:.0f} MB, "
        f"ingest peak {max(peaks['sdk'][0], peaks['push'][0]):.0f} MB"
    )
    verdict = Verdict(NAME, "annotation push", push_rate, "SDK records.log", sdk_rate, "rec/s", TARGET_RATIO, note)
    recorder.finish(
        verdict,
        {
            "records": count,
            "runs": runs,
            "push": {"seconds": round(seconds["push"], 2), "records_per_s": round(push_rate, 1)},
            "sdk": {"seconds": round(seconds["sdk"], 2), "records_per_s": round(sdk_rate, 1)},
            "seed_responses_s": round(seed_s, 1),
            "export": {
                "seconds": round(export_s, 3),
                "steps": export_steps,
                "all_seconds": [round(e[0], 3) for e in exports],
                "responses": answers,
                "status": export_status,
            },
            "server_memory_mb": {
                "idle": as_mb(idle),
                "sdk_ingest_peak": as_mb(peaks["sdk"]),
                "push_ingest_peak": as_mb(peaks["push"]),
                "after": as_mb(after),
                "pids": pids,
            },
            "loadavg_start": load,
            "order": "SDK, push, push, SDK (a fresh dataset each)",
        },
    )


if __name__ == "__main__":
    main()
