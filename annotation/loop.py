"""`python -m annotation loop run|status|collect`: the closed human-feedback loop, one round at a time.

    python -m annotation loop run --config configs/loop/default.yaml      # advance the round as far as it can go
    python -m annotation loop status --config configs/loop/default.yaml   # the round's progress per annotator
    python -m annotation loop collect --config configs/loop/default.yaml  # collect now, with what is answered
    python -m annotation loop run --config configs/loop/default.yaml --prompts_per_round 8 --candidates 2

A round lives in <output_dir>/round-NNN/. Each step writes its output whole (beside, then renamed into
place), so a stopped round resumes at the first step not done when the same command runs again:

1. sample (candidates.json): the current policy (round 1: `policy`, later the previous round's PPO
   output) answers each of the round's `prompts_per_round` prompts `candidates` times (`temperature`,
   `top_p`; identical answers merged, annotation/loop_candidates.py); the current reward model (round 1:
   `reward_model`, later the previous round's) scores every answer;
2. push (pushed.json): one comparison record per prompt in `dataset`, the candidates in an order fixed
   by the record id, the reward model's ranking and scores as a suggestion (agent `reward-model: <path>
   round N`), the loop, round, policy, reward model and kind of annotators in the metadata, and an id made
   of the loop (a hash of output_dir), the round and the prompt: a rerun updates the same records, never
   copies them, and loops sharing a dataset keep to their own records;
3. annotate: people in the UI, and `simulated_annotators` simulated ones (annotation/loop_annotators.py).
   The round collects once `collect_after` of its records (default: all) have `min_submitted` submitted
   answers, or on `loop collect`; until then `run` prints the progress and stops;
4. collect (pulled.jsonl, preferences/vN): the round's records with every answer are pulled, unified and
   exported as pairs (the export rules `pair_rule`, `ranking`, `tie_rule`), and version vN of the
   preference dataset <output_dir>/preferences is written: every pair of rounds 1..N, each row with its
   round; versions are never rewritten, so each round's data stays as it was;
5. retrain (reward/, ppo/): `python -m pipelines.reward` continues from the current reward model on all
   rounds' pairs, then `python -m pipelines.ppo` trains the current policy against it: their configs are
   `reward_config` and `ppo_config` with the `reward:` and `ppo:` overrides (written to reward.yaml and
   ppo.yaml in the round folder), with --resume where a stopped run left a checkpoint to continue from;
6. evaluate (eval/, round.json): `python -m pipelines.eval compare` answers held-out prompts with the
   policy before and after the round (verifier accuracy, reward-model score), and the round's figures go to
   round.json, the table <output_dir>/rounds.md and the HTML report <output_dir>/report.html.

Errors a user can cause (a dataset of another kind, a prompt set without a prompt column, a missing
model, the server stopping mid-round) are one line and exit 2; the round stays resumable.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from datasets import DatasetDict

from annotation import loop_annotators, schemas
from annotation.client import connect, dataset_exists, dataset_kind, fetch_records, find_dataset, split_address
from annotation.create import create_dataset
from annotation.export import ExportConfig, build_export, read_pulled, report, write_pulled, write_versioned
from annotation.push import best_probabilities, ranks_by_score, send_records
from annotation.unify import RANKING_RULES, SUBMITTED, TIE_RULES, PulledRecord, agreement, rank_vector
from annotation.users import default_credentials
from pipelines.cli import CliParser, UserError, check_output_dir, cli_entry
from pipelines.data.formats import to_prompts
from pipelines.data.preferences import PAIR_RULES
from pipelines.data.sources import load_source
from pipelines.models import resolve_model
from pipelines.runner import PRECISIONS, add_config_flags, config_layers, merge_config, parse_flags, read_yaml

if TYPE_CHECKING:
    import argilla as rg

COMMANDS = ("run", "status", "collect")
ROUND_FILE = "round.json"
ROUNDS_TABLE = "rounds"  # rounds.json, rounds.md
PAIRS = "pairs"
AGENT = "reward-model: {path} round {round}"


@dataclasses.dataclass
class LoopConfig:
    """Every key of configs/loop/*.yaml (flags of the same names win)."""

    # Where the rounds go
    dataset: str = dataclasses.field(
        default="loop/candidates",
        metadata={"help": "workspace/dataset: the comparison dataset every round's records go to (made if missing)"},
    )
    output_dir: str = dataclasses.field(default="runs/loop", metadata={"help": "round folders, preferences, models"})
    # The models round 1 starts from (later rounds continue from the previous round's outputs)
    policy: str | None = dataclasses.field(default=None, metadata={"help": "round 1's policy (e.g. the SFT output)"})
    reward_model: str | None = dataclasses.field(
        default=None, metadata={"help": "round 1's reward model (the output of python -m pipelines.reward)"}
    )
    # Prompts
    prompts: str = dataclasses.field(
        default="data/textsql/train.jsonl", metadata={"help": "the prompt set: any data source with a prompt column"}
    )
    columns: dict[str, str] = dataclasses.field(
        default_factory=dict, metadata={"help": "column mapping as in the stages' configs, e.g. {prompt: question}"}
    )
    reference_column: str | None = dataclasses.field(
        default="answer", metadata={"help": "the prompt set's reference answers (simulated annotators' tie-break)"}
    )
    system_prompt: str | None = dataclasses.field(default=None, metadata={"help": "system message before prompts"})
    prompts_per_round: int = dataclasses.field(default=32, metadata={"help": "prompts sampled per round"})
    # Sampling
    candidates: int = dataclasses.field(default=3, metadata={"help": "answers per prompt shown for ranking (K)"})
    temperature: float = dataclasses.field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = dataclasses.field(default=0.95, metadata={"help": "nucleus sampling (1.0: off)"})
    max_new_tokens: int = dataclasses.field(default=64, metadata={"help": "longest answer, in tokens"})
    max_draws: int = dataclasses.field(
        default=2, metadata={"help": "sampling passes for prompts still short of K distinct answers"}
    )
    batch_size: int = dataclasses.field(default=32, metadata={"help": "rows per generation / scoring batch"})
    precision: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "sampling and scoring: bf16 where the CPU multiplies it natively (auto)",
            "choices": PRECISIONS,
        },
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "prompt order and sampling seed"})
    push_batch_size: int = dataclasses.field(
        default=500, metadata={"help": "records per push request (the server takes at most 500)"}
    )
    # Annotation
    min_submitted: int = dataclasses.field(default=2, metadata={"help": "annotators who must submit each record"})
    collect_after: int | None = dataclasses.field(
        default=None, metadata={"help": "records with min_submitted answers before the round collects (default: all)"}
    )
    simulated_annotators: int = dataclasses.field(
        default=0, metadata={"help": "simulated annotators that answer each round (0: people only)"}
    )
    error_rate: float = dataclasses.field(default=0.1, metadata={"help": "simulated: share of reversed rankings"})
    disagreement_rate: float = dataclasses.field(
        default=0.2, metadata={"help": "simulated: share of rankings with two neighbours swapped"}
    )
    verifier: str = dataclasses.field(
        default="pipelines.tasks.textsql.reward:execution_reward",
        metadata={"help": "simulated: module:function(prompts, responses) -> floats they rank by"},
    )
    annotators_credentials: str | None = dataclasses.field(
        default=None, metadata={"help": "0600 file for new simulated annotators' passwords (default: the server's)"}
    )
    # Export rules
    pair_rule: str = dataclasses.field(
        default="all_pairs", metadata={"help": "rankings to pairs", "choices": PAIR_RULES}
    )
    ranking: str = dataclasses.field(
        default="majority", metadata={"help": "how rankings are unified", "choices": RANKING_RULES}
    )
    tie_rule: str = dataclasses.field(
        default="aside", metadata={"help": "annotators tied: aside or first", "choices": TIE_RULES}
    )
    # Retraining
    reward_config: str = dataclasses.field(
        default="configs/reward/default.yaml", metadata={"help": "the reward stage's config each round starts from"}
    )
    reward: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "reward-stage keys that override reward_config"}
    )
    heldout_pairs: str = dataclasses.field(
        default="data/textsql/pairs_test.jsonl", metadata={"help": "held-out pairs the reward model is scored on"}
    )
    heldout_pair_count: int = dataclasses.field(default=64, metadata={"help": "how many of them (the first N)"})
    ppo_config: str = dataclasses.field(
        default="configs/ppo/default.yaml", metadata={"help": "the PPO stage's config each round starts from"}
    )
    ppo: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "PPO keys that override ppo_config"}
    )
    # Evaluation
    eval_data: str = dataclasses.field(
        default="data/textsql/test.jsonl", metadata={"help": "held-out prompts for the before/after comparison"}
    )
    eval_samples: int = dataclasses.field(default=32, metadata={"help": "how many of them"})

    def __post_init__(self) -> None:
        if not 2 <= self.candidates <= schemas.MAX_CANDIDATES:
            raise ValueError(f"candidates must be 2 to {schemas.MAX_CANDIDATES}, got {self.candidates}")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("top_p must be in (0, 1] and temperature > 0")
        for name in ("error_rate", "disagreement_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if min(self.prompts_per_round, self.min_submitted, self.max_draws, self.eval_samples) < 1:
            raise ValueError("prompts_per_round, min_submitted, max_draws and eval_samples must be at least 1")
        if not 1 <= self.push_batch_size <= 500:
            raise ValueError(f"push_batch_size must be 1 to 500, got {self.push_batch_size}")


# ---------------------------------------------------------------------------- files


def write_whole(path: Path, text: str) -> None:
    """Written beside and renamed into place: a reader (or a rerun after a kill) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_json(path: Path, data: Any) -> None:
    write_whole(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclasses.dataclass
class Round:
    """One round's folder and the models it starts from."""

    number: int
    root: Path  # the loop's output_dir

    @property
    def dir(self) -> Path:
        return self.root / f"round-{self.number:03d}"

    def previous(self) -> Path:
        return self.root / f"round-{self.number - 1:03d}"

    def policy(self, config: LoopConfig) -> str:
        return str(self.previous() / "ppo") if self.number > 1 else str(config.policy)

    def reward_model(self, config: LoopConfig) -> str:
        return str(self.previous() / "reward") if self.number > 1 else str(config.reward_model)

    @property
    def preferences(self) -> Path:
        return self.root / "preferences" / f"v{self.number}"

    @property
    def loop(self) -> str:
        """This loop's name in record ids and metadata: loops sharing a dataset never touch each other's records."""
        return hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]

    def record_id(self, prompt: str) -> str:
        """The same loop, round and prompt always give the same record id: a rerun updates, never copies."""
        return f"loop-{self.loop}-round-{self.number:03d}-{hashlib.sha1(prompt.encode()).hexdigest()[:16]}"

    def owns(self, record: PulledRecord) -> bool:
        return record.metadata.get("loop") == self.loop and record.metadata.get("round") == self.number


def current_round(root: Path) -> Round:
    number = 1
    while (root / f"round-{number:03d}" / ROUND_FILE).is_file():
        number += 1
    return Round(number, root)


# ---------------------------------------------------------------------------- checks before any work


def round_prompts(config: LoopConfig, number: int) -> tuple[list[list[dict[str, str]]], dict[str, str]]:
    """(chat prompts of round `number`, prompt text -> reference answer): a seeded shuffle of the prompt
    set, `prompts_per_round` per round, each round the next slice."""
    rows = load_source(config.prompts)
    rows = rows["train"] if isinstance(rows, DatasetDict) else rows
    messages = to_prompts(rows, config.columns or None, config.system_prompt)
    order = list(range(len(messages)))
    random.Random(config.seed).shuffle(order)
    start = (number - 1) * config.prompts_per_round
    chosen = order[start : start + config.prompts_per_round]
    if not chosen:
        raise UserError(
            f"the prompt set {config.prompts} ({len(messages)} prompts) is used up by {number - 1} rounds of "
            f"{config.prompts_per_round}: add prompts or lower prompts_per_round"
        )
    column = config.reference_column
    has_reference = column is not None and column in rows.column_names
    references = {messages[i][-1]["content"]: str(rows[i][column]) for i in chosen} if has_reference else {}
    return [messages[i] for i in chosen], references


def check_models(config: LoopConfig, current: Round) -> None:
    for key, path in (("policy", current.policy(config)), ("reward_model", current.reward_model(config))):
        if current.number == 1 and getattr(config, key) is None:
            raise UserError(f"set {key}: round 1 starts from it (e.g. the outputs of the SFT and reward stages)")
        resolve_model(path)  # a folder or a name under models/, else a one-line error
    if current.number == 1:  # later rounds start from the reward model the loop trained
        from pipelines.runner import check_scoring_model

        check_scoring_model(current.reward_model(config))


def check_stage_overrides(config: LoopConfig, current: Round) -> None:
    """The `reward:` and `ppo:` overrides are read by stages that run after the annotators have answered: each
    stage checks its config now (`--validate true`: keys, types, bounds; nothing loaded), so a typo fails at once."""
    checks = {}
    with tempfile.TemporaryDirectory(prefix="loop-check-") as tmp:
        for key, base, overrides, fixed in (
            ("reward", config.reward_config, config.reward, {"output_dir": str(current.dir / "reward")}),
            ("ppo", config.ppo_config, config.ppo, {"reward_model_path": "unused", "reward_function": None}),
        ):
            yaml_file = stage_config(base, overrides, fixed, Path(tmp) / f"{key}.yaml")
            command = [sys.executable, "-m", f"pipelines.{key}", "--config", str(yaml_file), "--validate", "true"]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            checks[key] = (process, str(yaml_file), base)
        for key, (process, yaml_file, base) in checks.items():
            _, stderr = process.communicate()
            if process.returncode:
                said = (stderr.strip().splitlines() or [f"exit {process.returncode}"])[-1].removeprefix("error: ")
                where = f"{key}_config {base} with the loop's {key}: overrides"
                raise UserError(f"{said.replace(yaml_file, where)} (checked before the round starts)")


def loop_dataset(client: rg.Argilla, config: LoopConfig) -> rg.Dataset:
    """The round's comparison dataset, made if missing; one of another kind or size is a `UserError`."""
    if not dataset_exists(client, config.dataset):
        return create_dataset(client, config.dataset, "comparison", config.candidates, config.min_submitted)
    dataset = find_dataset(client, config.dataset)
    kind = dataset_kind(dataset)
    if kind != "comparison":
        raise UserError(f"dataset {config.dataset} is a {kind} dataset; the loop needs a comparison dataset")
    shown = sum(field.name.startswith("response_") for field in dataset.settings.fields)
    if shown != config.candidates:
        raise UserError(
            f"dataset {config.dataset} shows {shown} responses per record, the config samples {config.candidates}: "
            "set candidates to match or name another dataset"
        )
    return dataset


@contextmanager
def server_step(step: str, current: Round) -> Iterator[None]:
    """A server that stops answering mid-step is a one-line error; the step's output is not written."""
    from argilla._exceptions import InternalServerError  # here: the SDK costs a second to import, `--help` none

    try:
        yield
    except (httpx.TransportError, InternalServerError) as err:
        raise UserError(
            f"the Argilla server stopped answering while the loop {step} ({type(err).__name__}): start it again and "
            f"rerun the same command; round {current.number} resumes there"
        ) from None
    except httpx.HTTPStatusError as err:
        if err.response.status_code < 500:
            raise
        raise UserError(
            f"the Argilla server failed ({err.response.status_code}) while the loop {step}: rerun the same command; "
            f"round {current.number} resumes there"
        ) from None


# ---------------------------------------------------------------------------- steps 1-2: sample, push


def sample(
    config: LoopConfig, current: Round, prompts: list[list[dict[str, str]]], references: dict[str, str]
) -> dict[str, Any]:
    # imported here, not at the top: torch and the models are needed by this step only (`loop status` stays quick)
    from annotation.loop_candidates import sample_candidates, score_candidates
    from pipelines.runner import announce_precision, resolve_precision

    precision = announce_precision(resolve_precision(config.precision))
    policy, reward_model = current.policy(config), current.reward_model(config)
    answers = sample_candidates(
        policy,
        prompts,
        config.candidates,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        max_draws=config.max_draws,
        batch_size=config.batch_size,
        seed=config.seed + current.number,
        precision=precision,
    )
    kept = [(prompt, texts) for prompt, texts in zip(prompts, answers, strict=True) if len(texts) == config.candidates]
    scores = score_candidates(reward_model, [p for p, _ in kept], [t for _, t in kept], config.batch_size, precision)
    records = []
    for (prompt, texts), score in zip(kept, scores, strict=True):
        text = prompt[-1]["content"]
        records.append(
            {"id": current.record_id(text), "prompt": text, "candidates": texts, "scores": score}
            | ({"reference": references[text]} if text in references else {})
        )
    summary = {
        "round": current.number,
        "policy": policy,
        "reward_model": reward_model,
        "prompts": len(prompts),
        "records": len(records),
        "left_out_fewer_distinct_answers": len(prompts) - len(records),
        "records_detail": records,
    }
    if not records:
        raise UserError(
            f"no prompt of round {current.number} got {config.candidates} distinct answers from {policy} in "
            f"{config.max_draws} passes: raise temperature or max_draws, or lower candidates"
        )
    write_json(current.dir / "candidates.json", summary)
    return summary


def loop_records(config: LoopConfig, current: Round, sampled: dict[str, Any]) -> list[dict[str, Any]]:
    """Argilla record payloads: candidates in an order the record id fixes, the reward model's ranking suggested."""
    agent = schemas.agent_name(AGENT.format(path=sampled["reward_model"], round=current.number))
    annotators = "simulated" if config.simulated_annotators else "people"
    payloads = []
    for record in sampled["records_detail"]:
        order = list(range(len(record["candidates"])))
        random.Random(record["id"]).shuffle(order)
        texts = [record["candidates"][i] for i in order]
        scores = [float(record["scores"][i]) for i in order]
        names = schemas.candidate_names(len(texts))
        ranking = [{"value": n, "rank": r} for n, r in zip(names, ranks_by_score(scores), strict=True)]
        payloads.append(
            {
                "external_id": record["id"],
                "fields": {schemas.PROMPT: record["prompt"], **dict(zip(names, texts, strict=True))},
                "metadata": {
                    "loop": current.loop,
                    "round": current.number,
                    "policy": sampled["policy"],
                    "reward_model": sampled["reward_model"],
                    "annotators": annotators,
                    **{f"score_{i}": s for i, s in enumerate(scores, start=1)},
                },
                "suggestions": [
                    {
                        "question_name": schemas.RANKING,
                        "value": ranking,
                        "agent": agent,
                        "score": best_probabilities(scores),
                    }
                ],
            }
        )
    return payloads


def push(config: LoopConfig, current: Round, client: rg.Argilla, dataset: rg.Dataset, sampled: dict[str, Any]) -> None:
    payloads = loop_records(config, current, sampled)
    with server_step("pushed records", current):
        created, updated = send_records(client, dataset, payloads, config.push_batch_size)
    write_json(
        current.dir / "pushed.json",
        {
            "dataset": config.dataset,
            "url": f"{client.api_url.rstrip('/')}/dataset/{dataset.id}/annotation-mode",
            "created": created,
            "updated": updated,
        },
    )


# ---------------------------------------------------------------------------- step 3: annotate


def round_records(client: rg.Argilla, dataset: rg.Dataset, current: Round) -> list[PulledRecord]:
    return [record for record in fetch_records(client, dataset) if current.owns(record)]


def progress(records: Sequence[PulledRecord], config: LoopConfig) -> dict[str, Any]:
    """Per annotator: submitted/discarded/draft answers; and how many records are complete."""
    per_user: dict[str, Counter[str]] = {}
    for record in records:
        for answer in record.answers:
            per_user.setdefault(answer.user, Counter())[answer.status] += 1
    complete = sum(sum(a.status == SUBMITTED for a in r.answers) >= config.min_submitted for r in records)
    return {
        "records": len(records),
        "complete": complete,
        "needed": min(config.collect_after or len(records), len(records)),
        "min_submitted": config.min_submitted,
        "annotators": {user: dict(counts) for user, counts in sorted(per_user.items())},
    }


def simulate(
    config: LoopConfig, current: Round, client: rg.Argilla, dataset: rg.Dataset, sampled: dict[str, Any]
) -> None:
    workspace, _ = split_address(config.dataset)
    credentials = Path(config.annotators_credentials) if config.annotators_credentials else default_credentials()
    with server_step("made the simulated annotators", current):
        keys = loop_annotators.ensure_annotators(client, workspace, config.simulated_annotators, credentials)
    references = {r["prompt"]: r["reference"] for r in sampled["records_detail"] if "reference" in r}
    judge = loop_annotators.Judge(
        loop_annotators.import_verifier(config.verifier),
        references,
        config.error_rate,
        config.disagreement_rate,
        config.seed + current.number,
    )
    with server_step("simulated annotators answered", current):
        answered = loop_annotators.simulate(client.api_url, str(dataset.id), keys, judge)
    print(json.dumps({"round": current.number, "simulated_annotators_answered": answered}))


# ---------------------------------------------------------------------------- step 4: collect


def suggestion_agreement(records: Sequence[PulledRecord], suggested: dict[str, list[float]]) -> dict[str, Any]:
    """How often people agreed with the reward model's suggested ranking: the share of submitted rankings
    that put the suggestion's best candidate first (ties included), and of the candidate pairs both order
    strictly, the share ordered alike."""
    top, pairs_same, pairs = [], 0, 0
    for record in records:
        names, model = record.candidates(), suggested.get(record.id)
        if model is None:
            continue
        for answer in record.answers:
            value = answer.values.get(schemas.RANKING)
            if answer.status != SUBMITTED or not value:
                continue
            person = rank_vector(value, names)
            top.append(person[model.index(min(model))] == min(person))  # the model's best is among the person's
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    if person[i] != person[j] and model[i] != model[j]:
                        pairs += 1
                        pairs_same += (person[i] < person[j]) == (model[i] < model[j])
    return {
        "answers": len(top),
        "top1": sum(top) / len(top) if top else None,
        "pairs": pairs_same / pairs if pairs else None,
    }


def suggested_ranks(config: LoopConfig, current: Round, sampled: dict[str, Any]) -> dict[str, list[float]]:
    return {
        payload["external_id"]: [float(item["rank"]) for item in payload["suggestions"][0]["value"]]
        for payload in loop_records(config, current, sampled)
    }


def earlier_pairs(current: Round) -> list[dict[str, Any]]:
    """Every pair of the rounds before this one (version N-1); the versions must be exactly v1..vN-1, so the
    round's pairs become version N."""
    root = current.preferences.parent
    versions = sorted(int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()) if root.is_dir() else []
    if versions != list(range(1, current.number)):
        raise UserError(
            f"{root} holds versions {versions or 'none'}; round {current.number} needs exactly "
            f"v1..v{current.number - 1}: they are the loop's history (restore them, or start a new output_dir)"
        )
    if current.number == 1:
        return []
    before = root / f"v{current.number - 1}" / f"{PAIRS}.jsonl"
    return [json.loads(line) for line in before.read_text(encoding="utf-8").splitlines() if line]


def collect(
    config: LoopConfig, current: Round, client: rg.Argilla, dataset: rg.Dataset, sampled: dict[str, Any]
) -> dict[str, Any]:
    """Pull, unify, export the round's pairs and write preferences/vN (all rounds' pairs); the round's figures."""
    pulled = current.dir / "pulled.jsonl"
    rules = ExportConfig(pair_rule=config.pair_rule, ranking=config.ranking, tie_rule=config.tie_rule)
    if not current.preferences.is_dir():
        earlier = earlier_pairs(current)
        with server_step("pulled the round's answers", current):
            records = round_records(client, dataset, current)
        write_pulled(pulled, config.dataset, "comparison", records)
        result = build_export("comparison", records, rules)
        seen = {(r["id"], r["chosen"], r["rejected"]) for r in earlier}
        new = [r | {"round": current.number} for r in result.rows if (r["id"], r["chosen"], r["rejected"]) not in seen]
        summary = report(f"argilla://{config.dataset} round {current.number}", "comparison", records, result, rules)
        summary |= {"round": current.number, "round_pairs": len(new), "pairs_total": len(earlier) + len(new)}
        if not new:
            why = ", ".join(f"{k}: {v}" for k, v in result.left_out.items()) or "no submitted rankings"
            raise UserError(f"round {current.number} gave no new preference pairs ({why}); collect again later")
        aside = (item.disagreement_row() for item in result.unified if item.outcome == "disagreement")
        write_versioned(current.preferences.parent, PAIRS, earlier + new, summary, aside)
    _, records = read_pulled(pulled)
    figures = read_json(current.preferences / "report.json")
    return {
        "records": len(records),
        "pairs": figures["round_pairs"],
        "pairs_total": figures["pairs_total"],
        "annotators": {user: counts[SUBMITTED] for user, counts in figures["annotators"].items()},
        "suggestion_agreement": suggestion_agreement(records, suggested_ranks(config, current, sampled)),
        "alpha": agreement("comparison", records)["ranking"]["alpha"],
    }


# ---------------------------------------------------------------------------- steps 5-6: retrain, evaluate


def run_stage(module: str, *args: Any) -> None:
    """A stage through its own CLI; its failure (its message already shown) stops the loop with its exit code."""
    command = [sys.executable, "-m", module, *(str(a) for a in args)]
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode:
        raise SystemExit(done.returncode)


def stage_config(base: str, overrides: dict[str, Any], fixed: dict[str, Any], path: Path) -> Path:
    """`base` YAML + the loop's overrides + what the round fixes (models, data, output), saved in the round."""
    values = {**read_yaml(base), **overrides, **fixed}
    write_whole(path, f"# written by python -m annotation loop from {base}\n" + yaml.safe_dump(values))
    return path


def resumable(output_dir: Path) -> list[str]:
    """`--resume true` where a stopped stage left a checkpoint; an output dir without one holds only a stopped
    run's start: it is removed, and the stage begins again from scratch."""
    if output_dir.is_dir() and not any(output_dir.glob("checkpoint-*")):
        shutil.rmtree(output_dir)
    return ["--resume", "true"] if output_dir.is_dir() else []


def heldout_pairs(config: LoopConfig) -> Path:
    """The first `heldout_pair_count` held-out pairs, the same file every round (so accuracies compare)."""
    path = Path(config.output_dir) / "heldout_pairs.jsonl"
    if not path.is_file():
        rows = load_source(config.heldout_pairs)
        rows = rows.select(range(min(config.heldout_pair_count, len(rows))))
        write_whole(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def retrain(config: LoopConfig, current: Round) -> None:
    reward_dir, ppo_dir = current.dir / "reward", current.dir / "ppo"
    if not (reward_dir / "summary.json").is_file():
        fixed = {
            "model_name_or_path": current.reward_model(config),
            "dataset": str(current.preferences / f"{PAIRS}.jsonl"),  # the JSONL: no cache files in the version
            "eval_dataset": str(heldout_pairs(config)),
            "output_dir": str(reward_dir),
        }
        reward_yaml = stage_config(config.reward_config, config.reward, fixed, current.dir / "reward.yaml")
        run_stage("pipelines.reward", "--config", reward_yaml, *resumable(reward_dir))
    if not (ppo_dir / "summary.json").is_file():
        fixed = {
            "model_name_or_path": current.policy(config),
            "reward_model_path": str(reward_dir),
            "reward_function": None,
            "output_dir": str(ppo_dir),
        }
        ppo_yaml = stage_config(config.ppo_config, config.ppo, fixed, current.dir / "ppo.yaml")
        run_stage("pipelines.ppo", "--config", ppo_yaml, *resumable(ppo_dir))


def evaluate(config: LoopConfig, current: Round) -> None:
    eval_dir = current.dir / "eval"
    if (eval_dir / "comparison.json").is_file():
        return
    run_stage(
        "pipelines.eval",
        "compare",
        *("--models", current.policy(config), current.dir / "ppo"),
        *("--names", "before", "after"),
        *("--data", config.eval_data, "--samples", config.eval_samples, "--max_new_tokens", config.max_new_tokens),
        *("--reward_model", current.dir / "reward", "--output_dir", eval_dir),
    )


def figures(config: LoopConfig, current: Round, collected: dict[str, Any]) -> dict[str, Any]:
    """The round's row of the table: people vs the reward model, agreement, accuracy, the policy before/after."""
    reward = read_json(current.dir / "reward" / "summary.json")
    ppo = read_json(current.dir / "ppo" / "summary.json")
    comparison = read_json(current.dir / "eval" / "comparison.json")
    metrics = comparison["metrics"]
    accuracy = (comparison.get("verifier") or {}).get("metric")
    kls = [json.loads(line).get("objective/kl") for line in (current.dir / "ppo" / "metrics.jsonl").open()]
    kls = [kl for kl in kls if kl is not None]
    return {
        "round": current.number,
        "policy": current.policy(config),
        "reward_model": current.reward_model(config),
        **collected,
        "reward_train_pairs": reward.get("data", {}).get("train_pairs"),
        "reward_accuracy": reward.get("pairwise", {}).get("accuracy"),
        "policy_reward_before": (ppo.get("eval_before") or {}).get("score_mean"),
        "policy_reward_after": (ppo.get("eval_after") or {}).get("score_mean"),
        "kl": kls[-1] if kls else None,
        "verifier_accuracy_before": metrics["before"].get(accuracy) if accuracy else None,
        "verifier_accuracy_after": metrics["after"].get(accuracy) if accuracy else None,
    }


TABLE = (
    ("round", "round"),
    ("records", "records"),
    ("pairs (all rounds)", "pairs_total"),
    ("agreed with RM: best", "suggestion_agreement.top1"),
    ("agreed with RM: pairs", "suggestion_agreement.pairs"),
    ("alpha (ranking)", "alpha"),
    ("RM accuracy (held-out)", "reward_accuracy"),
    ("policy RM score before", "policy_reward_before"),
    ("after", "policy_reward_after"),
    ("KL", "kl"),
    ("verifier accuracy before", "verifier_accuracy_before"),
    ("after", "verifier_accuracy_after"),
)


def _cell(row: dict[str, Any], path: str) -> str:
    value: Any = row
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(_cell(row, path) for _, path in TABLE) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def finish(config: LoopConfig, current: Round, collected: dict[str, Any]) -> dict[str, Any]:
    row = figures(config, current, collected)
    write_json(current.dir / ROUND_FILE, row)
    rows = [read_json(path) for path in sorted(current.root.glob(f"round-*/{ROUND_FILE}"))]
    write_json(current.root / f"{ROUNDS_TABLE}.json", rows)
    write_whole(current.root / f"{ROUNDS_TABLE}.md", rounds_table(rows))
    run_stage("pipelines.eval", "report", "--run_dir", current.root)
    return row


# ---------------------------------------------------------------------------- the commands


def advance(config: LoopConfig, force_collect: bool) -> int:
    check_output_dir(config.output_dir, "--output_dir")
    current = current_round(Path(config.output_dir))
    split_address(config.dataset)
    check_models(config, current)
    check_stage_overrides(config, current)
    prompts, references = round_prompts(config, current.number)  # a prompt set without prompts fails here
    if config.simulated_annotators:
        loop_annotators.import_verifier(config.verifier)
    client = connect()
    with server_step("looked up its dataset", current):
        dataset = loop_dataset(client, config)
    candidates = current.dir / "candidates.json"
    sampled = read_json(candidates) if candidates.is_file() else sample(config, current, prompts, references)
    if not (current.dir / "pushed.json").is_file():
        push(config, current, client, dataset, sampled)
    if not current.preferences.is_dir():
        if config.simulated_annotators:
            simulate(config, current, client, dataset, sampled)
        with server_step("read the round's progress", current):
            state = progress(round_records(client, dataset, current), config)
        if state["complete"] < state["needed"] and not force_collect:
            print(json.dumps({"round": current.number, "waiting": True, **state}))
            print(
                f"round {current.number}: {state['complete']}/{state['needed']} records have {config.min_submitted} "
                "submitted answers; rerun `loop run` when annotators have answered, or `loop collect` to use what "
                "is there",
                file=sys.stderr,
            )
            return 0
    collected = collect(config, current, client, dataset, sampled)
    retrain(config, current)
    evaluate(config, current)
    row = finish(config, current, collected)
    print(f"\nround {current.number} done:\n{rounds_table([row])}")
    print(f"table: {current.root / (ROUNDS_TABLE + '.md')}; report: {current.root / 'report.html'}")
    return 0


def status(config: LoopConfig) -> int:
    current = current_round(Path(config.output_dir))
    steps = {
        "sampled": (current.dir / "candidates.json").is_file(),
        "pushed": (current.dir / "pushed.json").is_file(),
        "collected": current.preferences.is_dir(),
        "reward model retrained": (current.dir / "reward" / "summary.json").is_file(),
        "PPO done": (current.dir / "ppo" / "summary.json").is_file(),
    }
    state: dict[str, Any] = {"round": current.number, "steps": steps}
    if steps["pushed"]:
        client = connect()
        with server_step("read the round's progress", current):
            dataset = find_dataset(client, config.dataset)
            state |= progress(round_records(client, dataset, current), config)
    print(json.dumps(state, indent=2))
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation loop",
        description="The closed human-feedback loop, one round at a time.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("command", choices=COMMANDS, help="run: advance the round; status; collect: collect now")
    parser.add_argument("--config", help="YAML file with the keys below (configs/loop/default.yaml); flags win")
    add_config_flags(parser, LoopConfig)
    args = parse_flags(parser, argv)
    config = merge_config(LoopConfig, config_layers(args, LoopConfig))
    if args.command == "status":
        return status(config)
    return advance(config, force_collect=args.command == "collect")
