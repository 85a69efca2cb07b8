"""annotation_load: annotators working their queues on the embedded Argilla, from 10,000 to 1,000,000 records.

    python -m bench.annotation_load                         # 10,000 and 1,000,000 records (40 min here, mostly ingest)
    python -m bench.annotation_load --quick                 # 2,000 and 20,000 records, short runs: a smoke test

Every simulated annotator works as the UI's focus view does, over plain REST with its own API key:
fetch the first record of its pending queue (`POST /api/v1/me/datasets/{id}/records/search`, the UI's
filters: response status pending for this user and record status pending, `include=responses,suggestions`,
`limit 1`), then submit a ranking for it (`POST /api/v1/records/{id}/responses`); a comparison dataset
with overlap `min_submitted=2`. Steps:

1. ingest a small and a large dataset (`annotation push`'s upserts of 500), the server's memory (the
   API process and its children: rq worker, Redis; RSS and PSS) sampled before and after the large one;
2. one annotator at each size, in the order small, large, large, small, each run a new annotator
   (an empty history), `--single` submissions a run: queue fetch and submit p50/p95/p99;
3. `--annotators` annotators at once on the large dataset without pausing, for `--seconds`;
4. the same with a reading pause before each submission (uniform 4-12 s, mean 8 s);
5. every acknowledged response (a 201) checked against what the server stored: each annotator's
   submitted records, paged from its own `submitted` queue, and its metrics' submitted count.

Targets (the line says PASS only when all hold): queue fetch p95 <= 30 ms at the large size and within
20 % of the small size's; without pauses >= 60 submissions/s with fetch and submit p95 <= 500 ms; no
acknowledged response lost. The JSON has every latency summary, the counts and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.annotation_ingest import MemorySampler, as_mb, embedded_server
from bench.common import Recorder, Verdict, loadavg

NAME = "annotation_load"
TARGET_FETCH_P95_MS = 30.0
TARGET_FLAT = 1.2  # large-size fetch p95 at most this many times the small size's
TARGET_SUBMISSIONS_PER_S = 60.0
TARGET_CONCURRENT_P95_MS = 500.0
MIN_SUBMITTED = 2
PAUSE_S = (4.0, 12.0)
WORDS = ("table", "order", "customer", "price", "city", "product", "total", "count", "average", "which", "many")
# The UI's focus view: the annotator's pending records that are still pending overall.
QUEUE = {
    "filters": {
        "and": [
            {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
            {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
        ]
    }
}
SUBMITTED = {
    "filters": {
        "and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["submitted"]}]
    }
}
RANKING = {"ranking": {"value": [{"value": "response_1", "rank": 1}, {"value": "response_2", "rank": 2}]}}


# ---------------------------------------------------------------------------- data


def comparison_records(count: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Comparison records (a prompt, two responses) as `annotation push` sends them."""
    rng = random.Random(start)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    for i in range(start, start + count):
        yield {
            "external_id": f"rec-{i}",
            "fields": {"prompt": sentence(12), "response_1": sentence(30), "response_2": sentence(30)},
            "metadata": {},
            "suggestions": [],
        }


def ingest(client: Any, dataset: Any, count: int, chunk: int = 50_000) -> float:
    """Push `count` records in chunks (memory stays flat); returns the seconds it took."""
    from annotation.push import send_records

    start = time.perf_counter()
    for first in range(0, count, chunk):
        send_records(client, dataset, list(comparison_records(min(chunk, count - first), first)))
    return time.perf_counter() - start


def annotators(client: Any, workspace: Any, count: int) -> list[dict[str, str]]:
    """New annotator accounts in the workspace: [{"username", "id", "api_key"}] (keys from the owner's answer)."""
    http = client.api.http_client
    made = []
    for _ in range(count):
        body = {
            "username": f"ann-{uuid.uuid4().hex[:8]}",
            "first_name": "Annotator",
            "password": secrets.token_urlsafe(12),
            "role": "annotator",
        }
        created = http.post("/api/v1/users", json=body)
        created.raise_for_status()
        user = created.json()
        http.post(f"/api/v1/workspaces/{workspace.id}/users", json={"user_id": user["id"]}).raise_for_status()
        made.append({"username": user["username"], "id": user["id"], "api_key": user["api_key"]})
    return made


# ---------------------------------------------------------------------------- annotators at work


@dataclass
class Tally:
    """What the simulated annotators saw: latencies (s) and the acknowledged responses per annotator."""

    fetch: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    acknowledged: dict[str, set[str]] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)
    empty_queue: int = 0
    unanswered: int = 0  # requests that got no answer (connection refused or cut)
    seconds: float = 0.0

    @property
    def submissions(self) -> int:
        return sum(len(ids) for ids in self.acknowledged.values())

    def summary(self) -> dict[str, Any]:
        return {
            "submissions": self.submissions,
            "seconds": round(self.seconds, 2),
            "submissions_per_s": round(self.submissions / self.seconds, 2) if self.seconds else 0.0,
            "fetch_ms": percentiles(self.fetch),
            "submit_ms": percentiles(self.submit),
            "refused": {str(code): n for code, n in sorted(self.refused.items())},
            "empty_queue": self.empty_queue,
            "unanswered": self.unanswered,
        }


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}


async def annotate(
    url: str,
    dataset_id: str,
    users: list[dict[str, str]],
    tally: Tally,
    until: float | None = None,
    submissions: int | None = None,
    pause: tuple[float, float] | None = None,
    seed: int = 0,
) -> Tally:
    """Every user works its queue at once until `until` (monotonic time) or `submissions` each."""
    import aiohttp

    search = f"{url}/api/v1/me/datasets/{dataset_id}/records/search"
    params = [("include", "responses"), ("include", "suggestions"), ("offset", "0"), ("limit", "1")]

    async def one(user: dict[str, str], rng: random.Random) -> None:
        mine = tally.acknowledged.setdefault(user["id"], set())
        headers = {"X-Argilla-Api-Key": user["api_key"]}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as http:
            while (until is None or time.monotonic() < until) and (submissions is None or len(mine) < submissions):
                try:
                    record_id = await fetch(http)
                    if record_id is None:
                        return
                    if pause:
                        await asyncio.sleep(rng.uniform(*pause))
                    await submit(http, record_id, mine)
                except (aiohttp.ClientError, TimeoutError):
                    tally.unanswered += 1  # the server went away (a test kills it): this annotator stops
                    return

    async def fetch(http: aiohttp.ClientSession) -> str | None:
        began = time.perf_counter()
        async with http.post(search, params=params, json=QUEUE) as answer:
            answer.raise_for_status()
            items = (await answer.json())["items"]
        tally.fetch.append(time.perf_counter() - began)
        if not items:
            tally.empty_queue += 1
            return None
        return items[0]["record"]["id"]

    async def submit(http: aiohttp.ClientSession, record_id: str, mine: set[str]) -> None:
        began = time.perf_counter()
        body = {"values": RANKING, "status": "submitted"}
        async with http.post(f"{url}/api/v1/records/{record_id}/responses", json=body) as answer:
            await answer.read()
            status = answer.status
        tally.submit.append(time.perf_counter() - began)
        if status == 201:
            mine.add(record_id)
        else:
            tally.refused[status] = tally.refused.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(one(user, random.Random(seed + i)) for i, user in enumerate(users)))
    tally.seconds += time.perf_counter() - began
    return tally


def run_annotators(url: str, dataset_id: str, users: list[dict[str, str]], **kwargs: Any) -> Tally:
    return asyncio.run(annotate(url, dataset_id, users, Tally(), **kwargs))


# ---------------------------------------------------------------------------- nothing lost


def stored_submissions(client: Any, url: str, dataset_id: str, user: dict[str, str]) -> tuple[set[str], int]:
    """(the record ids of the user's submitted queue, paged; the submitted count of the user's metrics)."""
    import httpx

    with httpx.Client(base_url=f"{url}/api/v1", headers={"X-Argilla-Api-Key": user["api_key"]}, timeout=120) as http:
        ids: set[str] = set()
        while True:
            page = http.post(
                f"/me/datasets/{dataset_id}/records/search",
                params={"offset": len(ids), "limit": 1000},
                json=SUBMITTED,
            )
            page.raise_for_status()
            items = page.json()["items"]
            ids.update(item["record"]["id"] for item in items)
            if len(items) < 1000:
                break
        metrics = http.get(f"/me/datasets/{dataset_id}/metrics")
        metrics.raise_for_status()
    return ids, int(metrics.json()["responses"]["submitted"])


def check_nothing_lost(client: Any, url: str, dataset_id: str, users: list[dict[str, str]], tally: Tally) -> dict:
    acknowledged = lost = counted = 0
    for user in users:
        mine = tally.acknowledged.get(user["id"], set())
        stored, count = stored_submissions(client, url, dataset_id, user)
        acknowledged += len(mine)
        lost += len(mine - stored)
        counted += count
    return {"acknowledged": acknowledged, "stored": counted, "lost": lost}


# ---------------------------------------------------------------------------- the run


def new_dataset(client: Any, workspace: str, label: str) -> Any:
    from annotation.create import create_dataset

    return create_dataset(client, f"{workspace}/{label}-{uuid.uuid4().hex[:6]}", "comparison", 2, MIN_SUBMITTED)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.annotation_load", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test, not a figure")
    parser.add_argument("--small", type=int, default=None, help="records of the small dataset (10,000; quick 2,000)")
    parser.add_argument("--large", type=int, default=None, help="records of the large one (1,000,000; quick 20,000)")
    parser.add_argument("--single", type=int, default=None, help="submissions per one-annotator run (300; quick 50)")
    parser.add_argument("--annotators", type=int, default=50, help="annotators at once (50)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each concurrent run (60 s; quick 10)")
    parser.add_argument("--processes", type=int, default=None, help="server processes (default: the launcher's)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="requests at once per server process (default: the launcher's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="accepted for `python -m bench`; unused here")
    args = parser.parse_args(argv)
    small = args.small or (2_000 if args.quick else 10_000)
    large = args.large or (20_000 if args.quick else 1_000_000)
    single = args.single or (50 if args.quick else 300)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    recorder = Recorder(NAME, args.quick)

    with tempfile.TemporaryDirectory(prefix="bench-annotation-load-") as tmp:
        server: AbstractContextManager[list[int]]
        if os.environ.get("ARGILLA_API_URL"):
            server = nullcontext([])
        else:
            extra = ["--processes", str(args.processes)] if args.processes else []
            extra += ["--concurrency", str(args.concurrency)] if args.concurrency else []
            server = embedded_server(Path(tmp) / "home", *extra)
        with server as pids:
            from annotation.client import connect

            client = connect()
            url = client.api_url.rstrip("/")
            workspace_name = f"load-{uuid.uuid4().hex[:6]}"
            sampler = MemorySampler(pids)
            load_start = loadavg()
            datasets = {"small": new_dataset(client, workspace_name, "small")}
            ingest(client, datasets["small"], small)
            datasets["large"] = new_dataset(client, workspace_name, "large")
            time.sleep(2.0)
            memory_before = sampler.sample()
            with sampler.watch():
                ingest_s = ingest(client, datasets["large"], large)
            memory_peak = sampler.peak
            time.sleep(2.0)
            memory_after = sampler.sample()
            workspace = client.workspaces(workspace_name)

            singles: list[dict[str, Any]] = []
            for size in ("small", "large", "large", "small"):
                users = annotators(client, workspace, 1)
                tally = run_annotators(url, str(datasets[size].id), users, submissions=single)
                lost = check_nothing_lost(client, url, str(datasets[size].id), users, tally)
                singles.append({"size": size, "loadavg": loadavg(), **tally.summary(), **lost})
                print(f"  1 annotator, {size}: {tally.summary()['fetch_ms']}", flush=True)

            crowd = annotators(client, workspace, args.annotators)
            large_id = str(datasets["large"].id)
            load_busy = loadavg()
            busy = run_annotators(url, large_id, crowd, until=time.monotonic() + seconds)
            busy_lost = check_nothing_lost(client, url, large_id, crowd, busy)
            print(f"  {args.annotators} annotators, no pause: {busy.summary()}", flush=True)
            readers = annotators(client, workspace, args.annotators)
            reading = run_annotators(url, large_id, readers, until=time.monotonic() + seconds, pause=PAUSE_S)
            reading_lost = check_nothing_lost(client, url, large_id, readers, reading)
            print(f"  {args.annotators} annotators, reading: {reading.summary()}", flush=True)

    def p95(size: str) -> float:
        return max(run["fetch_ms"]["p95"] for run in singles if run["size"] == size)

    small_p95, large_p95 = p95("small"), p95("large")
    summary = busy.summary()
    lost = sum(run["lost"] for run in singles) + busy_lost["lost"] + reading_lost["lost"]
    targets = {
        f"fetch p95 @{large:,} <= {TARGET_FETCH_P95_MS:g} ms": large_p95 <= TARGET_FETCH_P95_MS,
        f"@{large:,} within {TARGET_FLAT - 1:.0%} of @{small:,}": large_p95 <= TARGET_FLAT * small_p95,
        f"{args.annotators} annotators >= {TARGET_SUBMISSIONS_PER_S:g} submissions/s": summary["submissions_per_s"]
        >= TARGET_SUBMISSIONS_PER_S,
        f"fetch and submit p95 <= {TARGET_CONCURRENT_P95_MS:g} ms": max(
            summary["fetch_ms"]["p95"], summary["submit_ms"]["p95"]
        )
        <= TARGET_CONCURRENT_P95_MS,
        "0 acknowledged lost": lost == 0,
    }
    note = (
        f"{args.annotators} annotators: {summary['submissions_per_s']:.1f} submissions/s, fetch p95 "
        f"{summary['fetch_ms']['p95']:.0f} ms, submit p95 {summary['submit_ms']['p95']:.0f} ms; reading: "
        f"{reading.summary()['submissions_per_s']:.1f}/s, fetch p95 {reading.summary()['fetch_ms']['p95']:.0f} ms; "
        f"lost {lost}; server RSS {memory_before[0]:.0f} -> {memory_after[0]:.0f} MB over {large:,} records; "
        + "; ".join(f"{name} {'ok' if held else 'MISSED'}" for name, held in targets.items())
    )
    verdict = Verdict(
        NAME,
        f"fetch p95 @{small:,}",
        small_p95,
        f"@{large:,}",
        large_p95,
        "ms",
        1 / TARGET_FLAT,
        note,
        condition_met=all(targets.values()),
    )
    recorder.finish(
        verdict,
        {
            "records": {"small": small, "large": large},
            "server_processes": args.processes or "default",
            "server_concurrency": args.concurrency or "default",
            "targets": targets,
            "ingest": {
                "records": large,
                "seconds": round(ingest_s, 1),
                "records_per_s": round(large / ingest_s, 1),
                "server_memory_mb": {
                    "before": as_mb(memory_before),
                    "peak": as_mb(memory_peak),
                    "after": as_mb(memory_after),
                },
            },
            "one_annotator": singles,
            "concurrent": {"annotators": args.annotators, "loadavg_start": load_busy, **summary, **busy_lost},
            "reading": {"annotators": args.annotators, "pause_s": PAUSE_S, **reading.summary(), **reading_lost},
            "loadavg_start": load_start,
        },
    )


if __name__ == "__main__":
    main()
