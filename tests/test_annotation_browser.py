"""An annotator in the real Argilla UI, end to end: `python -m annotation users add` and `push` make a
comparison dataset, the annotator signs in through the login form of headless Chromium, ranks the three
candidates of each record (one record by drag and drop, the other with the widget's number keys) and
submits; then `python -m annotation pull` and `export` give exactly the chosen/rejected pairs that this
ranking implies. Screenshots: test-artifacts/annotation_ranking.png (a ranked record before Submit) and
test-artifacts/annotation_submitted.png (a submitted record as the UI loads it back from the server); on a
failure, test-artifacts/annotation_failure.png shows what the UI showed instead. And a record of the
human-feedback loop opens with the reward model's ranking already in the slots
(test-artifacts/loop_suggested_ranking.png)."""

from __future__ import annotations

import functools
import itertools
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.browser import artifact, launch_chromium
from tests.conftest import REPO_ROOT, cli_command, cli_env

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

    from tests.conftest import ArgillaServer

RECORDS = [
    {
        "id": "capital",
        "prompt": "Which city is the capital of France?",
        "response_1": "Lyon is the capital.",
        "response_2": "Paris is the capital of France.",
        "response_3": "France has no capital.",
    },
    {"id": "sum", "prompt": "What is 2 + 2?", "response_1": "5", "response_2": "22", "response_3": "4"},
]
# What the annotator gives in the UI, best first: neither the order the candidates are shown in nor its reverse.
BEST_FIRST = {"capital": ["response_2", "response_1", "response_3"], "sum": ["response_3", "response_1", "response_2"]}
TIMEOUT_MS = 30_000  # each UI state; the 2-core machine is shared, a state normally takes well under a second


def annotation_cli(server: ArgillaServer, *args: Any) -> dict[str, Any]:
    """`python -m annotation <args>` as a user runs it next to `server start` (the var dir in ANNOTATION_HOME,
    no ARGILLA_API_URL); its JSON output."""
    env = {k: v for k, v in cli_env().items() if k not in ("ARGILLA_API_URL", "ARGILLA_API_KEY")}
    done = subprocess.run(
        cli_command("annotation", *args),
        cwd=REPO_ROOT,
        env={**env, "ANNOTATION_HOME": str(server.var_dir)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def title(candidate: str) -> str:
    """The card title the UI shows for a candidate (`response_2` -> `Response 2`, as annotation.schemas names it)."""
    return candidate.replace("response_", "Response ")


def next_record(page: Page, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Which of `records` the UI shows once it shows one (the queue is in the annotator's own shuffled order)."""
    from playwright.sync_api import expect

    prompts = [page.get_by_text(record["prompt"], exact=True) for record in records]
    expect(functools.reduce(lambda a, b: a.or_(b), prompts)).to_be_visible(timeout=TIMEOUT_MS)
    return next(record for record, prompt in zip(records, prompts, strict=True) if prompt.is_visible())


def expect_ranked(question: Locator, best_first: list[str]) -> None:
    from playwright.sync_api import expect

    expect(question.locator(".draggable__slot-box")).to_have_text([title(c) for c in best_first], timeout=TIMEOUT_MS)


def rank_by_dragging(question: Locator, best_first: list[str]) -> None:
    """Drag each candidate card onto the slot of its rank, as with a mouse."""
    from playwright.sync_api import expect

    unranked = question.locator(".draggable__questions-container")
    slots = question.locator(".draggable__slot-box")
    for rank, candidate in enumerate(best_first):
        unranked.get_by_title(title(candidate), exact=True).drag_to(slots.nth(rank))
        expect(slots.nth(rank)).to_have_text(title(candidate), timeout=TIMEOUT_MS)
    expect_ranked(question, best_first)


def rank_with_keys(page: Page, question: Locator, best_first: list[str]) -> None:
    """Focus each candidate card and type its rank. The widget joins digits typed within 300 ms into one number
    (so 1 then 2 would mean rank 12), then focuses the first unranked card: the sign to type the next rank."""
    from playwright.sync_api import expect

    unranked = question.locator(".draggable__questions-container")
    slots = question.locator(".draggable__slot-box")
    for rank, candidate in enumerate(best_first, start=1):
        unranked.get_by_title(title(candidate), exact=True).focus()
        page.keyboard.press(str(rank))
        expect(slots.nth(rank - 1)).to_have_text(title(candidate), timeout=TIMEOUT_MS)
        if rank < len(best_first):
            expect(unranked.locator(":scope > div").first).to_be_focused(timeout=TIMEOUT_MS)
    expect_ranked(question, best_first)


def open_dataset(page: Page, url: str, username: str, password: str, dataset: str) -> None:
    """Sign in through the login form and open `dataset` from the home page, which lists the user's datasets."""
    page.set_default_timeout(TIMEOUT_MS)
    # Nothing but the server: the UI asks Google for web fonts, which must not reach (or wait on) a network.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    page.goto(f"{url}/sign-in")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name=dataset).click()


def submit(page: Page) -> None:
    """Press Submit and wait until the server has stored the submitted response."""
    with page.expect_response(
        lambda r: "/responses" in r.url and (r.request.post_data_json or {}).get("status") == "submitted",
        timeout=TIMEOUT_MS,
    ) as stored:
        page.get_by_role("button", name="Submit").click()
    assert stored.value.status in (200, 201), stored.value.text()


def test_an_annotator_ranks_in_the_ui_and_the_export_has_exactly_those_pairs(
    argilla_server: ArgillaServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    workspace = f"ui{uuid.uuid4().hex[:8]}"
    annotator = f"{workspace}ann"
    added = annotation_cli(argilla_server, "users", "add", workspace, annotator)
    password = json.loads(Path(added["credentials"]).read_text())[annotator]["password"]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS), encoding="utf-8")
    pushed = annotation_cli(argilla_server, "push", f"{workspace}/prefs", "--kind", "comparison", "--data", data)
    assert pushed["created"] == len(RECORDS)

    Path(artifact("annotation_failure.png")).unlink(missing_ok=True)  # an earlier run's
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            open_dataset(page, argilla_server.url, annotator, password, "prefs")
            question = page.get_by_label("Question: ranking")

            first = next_record(page, RECORDS)
            rank_by_dragging(question, BEST_FIRST[first["id"]])
            page.screenshot(path=artifact("annotation_ranking.png"))
            submit(page)
            second = next_record(page, [record for record in RECORDS if record is not first])
            rank_with_keys(page, question, BEST_FIRST[second["id"]])
            submit(page)
            # The empty queue says one or the other, depending on whether the dataset's progress had reached
            # 100 % when the UI drew it; the footer counts this annotator's submissions.
            done = page.get_by_text("The task is completed").or_(page.get_by_text("no pending records to annotate"))
            expect(done).to_be_visible(timeout=TIMEOUT_MS)
            submitted = page.get_by_role("listitem").filter(has_text=re.compile("submitted", re.IGNORECASE))
            expect(submitted).to_have_text(
                re.compile(rf"submitted\s*{len(RECORDS)}$", re.IGNORECASE), timeout=TIMEOUT_MS
            )

            # The submitted queue, loaded back from the server: each record shows the ranking it was given.
            page.goto(page.url.split("?")[0] + "?page=1&status=submitted")
            first = next_record(page, RECORDS)
            expect_ranked(question, BEST_FIRST[first["id"]])
            page.screenshot(path=artifact("annotation_submitted.png"))
            page.get_by_role("button", name="Next").click()
            second = next_record(page, [record for record in RECORDS if record is not first])
            expect_ranked(question, BEST_FIRST[second["id"]])
        except BaseException:
            page.screenshot(path=artifact("annotation_failure.png"))  # what the UI showed instead
            raise
        finally:
            browser.close()
    assert page_errors == []

    summary = annotation_cli(argilla_server, "pull", f"{workspace}/prefs", "--output", tmp_path / "pulled.jsonl")
    assert summary["annotators"] == {annotator: {"submitted": len(RECORDS), "discarded": 0, "draft": 0}}
    header, *pulled = [json.loads(line) for line in (tmp_path / "pulled.jsonl").read_text().splitlines()]
    assert header == {"dataset": f"{workspace}/prefs", "kind": "comparison", "records": len(RECORDS)}
    assert sorted(record["id"] for record in pulled) == sorted(BEST_FIRST)
    for record in pulled:
        [answer] = record["answers"]  # the annotator's, and only the ranking (the optional rewrite left empty)
        assert (answer["user"], answer["status"], list(answer["values"])) == (annotator, "submitted", ["ranking"])
        ranks = {item["value"]: item["rank"] for item in answer["values"]["ranking"]}
        assert ranks == {candidate: i for i, candidate in enumerate(BEST_FIRST[record["id"]], start=1)}

    annotation_cli(argilla_server, "export", f"{workspace}/prefs", "--output_dir", tmp_path / "export")
    exported = [json.loads(line) for line in (tmp_path / "export" / "v1" / "prefs.jsonl").read_text().splitlines()]
    expected = [
        (record["id"], record["prompt"], record[better], record[worse])
        for record in RECORDS
        for better, worse in itertools.combinations(BEST_FIRST[record["id"]], 2)
    ]
    assert [(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in exported] == expected


def test_a_loop_record_shows_the_reward_models_suggested_ranking(argilla_server: ArgillaServer, tmp_path: Path) -> None:
    """A record as `python -m annotation loop` pushes it (the loop's own record building and push, on a round
    whose candidates and reward-model scores are given): the annotator opens it and finds the reward model's
    ranking already in the ranking slots, best first. Screenshot: test-artifacts/loop_suggested_ranking.png."""
    import argilla as rg
    from playwright.sync_api import expect, sync_playwright

    from annotation.loop import LoopConfig, Round, loop_dataset, push

    workspace = f"ui{uuid.uuid4().hex[:8]}"
    annotator = f"{workspace}ann"
    added = annotation_cli(argilla_server, "users", "add", workspace, annotator)
    password = json.loads(Path(added["credentials"]).read_text())[annotator]["password"]
    config = LoopConfig(dataset=f"{workspace}/loop", candidates=3, min_submitted=1)
    current = Round(1, tmp_path / "loop")
    prompt = "How many customers live in Lyon?"
    answers = ["SELECT COUNT(*) FROM customers WHERE city = 'Lyon';", "SELECT * FROM customers;", "SELECT city;"]
    sampled = {
        "policy": "runs/ppo-smollm2",
        "reward_model": "runs/reward-smollm2",
        "records_detail": [
            {"id": current.record_id(prompt), "prompt": prompt, "candidates": answers, "scores": [2.5, -1.0, 0.3]}
        ],
    }
    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    push(config, current, client, loop_dataset(client, config), sampled)
    [record] = client.datasets("loop", workspace=workspace).records.to_list(flatten=False)
    shown = {record["fields"][f"response_{i}"]: f"response_{i}" for i in (1, 2, 3)}
    suggested = [shown[answers[i]] for i in (0, 2, 1)]  # by score, best first: 2.5, 0.3, -1.0

    Path(artifact("loop_failure.png")).unlink(missing_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            open_dataset(page, argilla_server.url, annotator, password, "loop")
            expect(page.get_by_text(prompt, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
            # the slots are pre-filled from the suggestion: each card with its probability of being best and the agent
            slots = page.get_by_label("Question: ranking").locator(".draggable__slot-box")
            best = dict(zip(suggested, ("0.9", "0.1", "0.0"), strict=True))  # softmax of 2.5, 0.3, -1.0
            agent = r"Suggestion\s*reward-model: runs/reward-smollm2 round 1"
            cards = [rf"^\s*{title(name)}\s+{rank}\s+{best[name]}\s+{agent}$" for rank, name in enumerate(suggested, 1)]
            expect(slots).to_have_text([re.compile(card) for card in cards], timeout=TIMEOUT_MS)
            page.screenshot(path=artifact("loop_suggested_ranking.png"), full_page=True)
            assert json.loads((current.dir / "pushed.json").read_text())["url"] == page.url.split("?")[0]
        except BaseException:
            page.screenshot(path=artifact("loop_failure.png"))
            raise
        finally:
            browser.close()
