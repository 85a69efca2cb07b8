"""Simulated annotators for the loop's demo and tests: real accounts on the server that work as the UI does.

Each is an annotator of the workspace, named `simulated-annotator-N` and shown in the UI as "Simulated
annotator" (a loop record's metadata says `annotators: simulated` too), created by the owner (a random
password in the 0600 credentials file, should a person want to sign in as one). It works with its own
API key only, on the endpoints the UI calls: its pending queue with `POST
/api/v1/me/datasets/{id}/records/search` (the UI's filter: its own response pending, the record still
pending under the dataset's task distribution) and one answer per record with `POST
/api/v1/records/{id}/responses`. So a round passes through the server's task
distribution: a record leaves every queue once `min_submitted` annotators have submitted it.

How one ranks: by the task's verifier (a `module:function(prompts, responses) -> floats`, e.g. the
executed-SQL reward: right result > wrong result > SQL that fails), ties broken by closeness to the
reference answer (difflib ratio), best first. Then, independently per record and annotator (seeded, so
a rerun gives the same answers), with probability `error_rate` the ranking is reversed (a mistake) and
with probability `disagreement_rate` two neighbouring candidates swap places (a matter of taste).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from annotation import schemas
from annotation.users import add_users
from pipelines.cli import UserError

if TYPE_CHECKING:
    import argilla as rg

USERNAME = "simulated-annotator-{}"
FULL_NAME = "Simulated annotator"
PAGE = 50
Verifier = Callable[[list[str], list[str]], list[float]]


def usernames(count: int) -> list[str]:
    return [USERNAME.format(i) for i in range(1, count + 1)]


def import_verifier(spec: str) -> Verifier:
    """`module:function` -> the function; a one-line `UserError` when it cannot be found."""
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name) if name else None
    except (ImportError, AttributeError):
        function = None
    if not callable(function):
        raise UserError(f"verifier {spec!r} is not an importable module:function (prompts, responses) -> floats")
    return function


def ensure_annotators(client: rg.Argilla, workspace: str, count: int, credentials: Path) -> dict[str, str]:
    """The simulated annotators, created and added to `workspace` where missing (new passwords go to
    `credentials`, for a person who wants to sign in as one): username -> the user's own API key, which the
    owner's client may read."""
    names = usernames(count)
    add_users(workspace, names, "annotator", credentials, FULL_NAME)
    listed = client.api.http_client.get("/api/v1/users")
    listed.raise_for_status()
    keys = {user["username"]: user["api_key"] for user in listed.json()["items"]}
    return {name: keys[name] for name in names}


@dataclasses.dataclass
class Judge:
    """How every simulated annotator ranks a record's candidates (see the module docstring)."""

    verifier: Verifier
    references: Mapping[str, str]  # prompt -> reference answer
    error_rate: float
    disagreement_rate: float
    seed: int

    def best_first(self, prompt: str, candidates: Sequence[str]) -> list[tuple[float, float]]:
        scores = self.verifier([prompt] * len(candidates), list(candidates))
        reference = self.references.get(prompt, "")
        return [
            (float(score), difflib.SequenceMatcher(None, text, reference).ratio())
            for score, text in zip(scores, candidates, strict=True)
        ]

    def ranking(self, username: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Argilla's ranking value for one annotator and record (rank 1 = best; equal keys share a rank)."""
        fields = record["fields"]
        names = [name for name in schemas.candidate_names(schemas.MAX_CANDIDATES) if fields.get(name)]
        keys = self.best_first(fields[schemas.PROMPT], [fields[name] for name in names])
        rng = random.Random(f"{self.seed}/{username}/{record.get('external_id') or record['id']}")
        error, disagreement = rng.random() < self.error_rate, rng.random() < self.disagreement_rate
        if error:
            keys = [(-score, -closeness) for score, closeness in keys]
        levels = sorted(set(keys), reverse=True)
        ranks = [levels.index(key) + 1 for key in keys]
        if disagreement and len(levels) > 1:
            swap = rng.randrange(len(levels) - 1) + 1  # ranks swap and swap + 1 trade places
            ranks = [swap + 1 if r == swap else swap if r == swap + 1 else r for r in ranks]
        return [{"value": name, "rank": rank} for name, rank in zip(names, ranks, strict=True)]


PENDING = {
    "filters": {
        "and": [
            {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
            {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
        ]
    }
}


def work_queue(url: str, api_key: str, dataset_id: str, username: str, judge: Judge) -> int:
    """Answer every record in this annotator's pending queue, a page at a time; returns how many."""
    answered = 0
    with httpx.Client(base_url=url, headers={"X-Argilla-Api-Key": api_key}, timeout=120) as http:
        while True:
            page = http.post(f"/api/v1/me/datasets/{dataset_id}/records/search", params={"limit": PAGE}, json=PENDING)
            page.raise_for_status()
            items = [item["record"] for item in page.json()["items"]]
            if not items:
                return answered
            for record in items:
                body = {"values": {schemas.RANKING: {"value": judge.ranking(username, record)}}, "status": "submitted"}
                done = http.post(f"/api/v1/records/{record['id']}/responses", json=body)
                if done.status_code == 409:  # answered meanwhile (an earlier run, stopped before it saw the reply)
                    continue
                done.raise_for_status()
                answered += 1


def simulate(url: str, dataset_id: str, keys: Mapping[str, str], judge: Judge) -> dict[str, int]:
    """Every simulated annotator works through its queue with its own API key, side by side as people would;
    username -> answers."""
    with ThreadPoolExecutor(max_workers=len(keys) or 1) as pool:
        counts = pool.map(lambda name: work_queue(url, keys[name], dataset_id, name, judge), keys)
        return dict(zip(keys, counts, strict=True))
