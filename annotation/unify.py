"""One answer per record from several annotators' answers, and how much the annotators agree.

Argilla 2.x stores each annotator's response separately; the training stages need one answer per
record. The rules (`UnifyConfig`, keys `rating`, `ranking`, `tie_rule`):

- drafts never count; a record is *discarded* when more annotators discarded it than submitted it;
- labels (keep/discard) and full rankings: the value given by the most annotators wins
  (`ranking: mean_rank` instead ranks candidates by their mean rank, equal means staying tied);
- ratings: the mean (or `rating: median`) of the submitted ratings;
- corrections: any non-empty correction wins over the original text; when annotators wrote
  different ones, the text written by the most annotators wins;
- a tie between the leading values (1 keep vs 1 discard, two rankings with 1 vote each...) is a
  *disagreement*: `tie_rule: aside` (default) leaves the record out of the export and lists it with
  every answer in `disagreements.jsonl`; `tie_rule: first` takes the value given first (earliest
  `updated_at`).

Agreement is Krippendorff's alpha per question over the submitted answers (nominal for labels and
the submit/discard status, ordinal for ratings and for the rank of each candidate), with the share
of annotator pairs that gave the same value; alpha is None where it is undefined (no record with two
answers, or a single value used throughout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import statistics
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

from annotation import schemas

SUBMITTED, DISCARDED, DRAFT = "submitted", "discarded", "draft"
RATING_RULES = ("mean", "median")
RANKING_RULES = ("majority", "mean_rank")
TIE_RULES = ("aside", "first")
Outcome = Literal["accepted", "discarded", "unanswered", "disagreement"]


@dataclasses.dataclass(frozen=True)
class Answer:
    """One annotator's response to one record: `values` maps question name -> value."""

    user: str
    status: str
    values: Mapping[str, Any]
    updated_at: str = ""


@dataclasses.dataclass
class PulledRecord:
    """A record as pulled from Argilla: its own id, field values, metadata and every annotator's answer."""

    id: str
    fields: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    answers: list[Answer] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> PulledRecord:
        answers = [Answer(**answer) for answer in row.get("answers", [])]
        metadata = dict(row.get("metadata") or {})
        return cls(id=str(row["id"]), fields=dict(row["fields"]), metadata=metadata, answers=answers)

    def candidates(self) -> list[str]:
        """Comparison candidates present in this record, in field order (response_1, response_2...)."""
        names = schemas.candidate_names(schemas.MAX_CANDIDATES)
        return [name for name in names if self.fields.get(name) not in (None, "")]


@dataclasses.dataclass(frozen=True)
class UnifyConfig:
    rating: str = "mean"
    ranking: str = "majority"
    tie_rule: str = "aside"

    def __post_init__(self) -> None:
        for key, allowed in (("rating", RATING_RULES), ("ranking", RANKING_RULES), ("tie_rule", TIE_RULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")


@dataclasses.dataclass
class Unified:
    """The unified answer of one record; `outcome` says whether the export may use it."""

    record: PulledRecord
    outcome: Outcome
    submitted: int = 0
    discarded: int = 0
    decision: str | None = None
    rating: float | None = None
    correction: str | None = None
    ranks: list[float] | None = None  # one per `record.candidates()`, 1 = best
    reason: str = ""

    def disagreement_row(self) -> dict[str, Any]:
        """What a reviewer needs to settle a disagreement: the record and every answer."""
        return {"id": self.record.id, "reason": self.reason, **self.record.to_json()}


class _Tie(Exception):
    def __init__(self, what: str, leaders: Sequence[Any]) -> None:
        super().__init__(f"tie on {what}: {' vs '.join(map(str, leaders))}")


def _vote(what: str, votes: Sequence[Hashable], tie_rule: str) -> Any:
    """The value with most votes; `votes` are in answer order, so 'first' is the earliest leader."""
    counts = Counter(votes)
    top = max(counts.values())
    leaders = [value for value in counts if counts[value] == top]  # Counter keeps first-seen order
    if len(leaders) == 1 or tie_rule == "first":
        return leaders[0]
    raise _Tie(what, leaders)


def rank_vector(value: Any, candidates: Sequence[str]) -> tuple[float, ...]:
    """An Argilla ranking value (`[{"value": "response_2", "rank": 1}, ...]`) as ranks aligned to `candidates`.

    A candidate the annotator left unranked counts as worse than every ranked one. A value with no
    ranks at all (the SDK sends a list of names that way) is ranked by its order, best first.
    """
    items = list(value or [])
    if all(item.get("rank") is None for item in items):
        items = [{"value": item["value"], "rank": position} for position, item in enumerate(items, start=1)]
    given = {item["value"]: item["rank"] for item in items if item.get("rank") is not None}
    worst = max(given.values(), default=0) + 1
    return tuple(float(given.get(name, worst)) for name in candidates)


def mean_ranks(rankings: Sequence[Sequence[float]]) -> list[float]:
    """Candidates ordered by mean rank over annotators, re-ranked 1, 2, ... (equal means share a rank)."""
    means = [statistics.fmean(column) for column in zip(*rankings, strict=True)]
    levels = sorted(set(means))
    return [float(levels.index(mean) + 1) for mean in means]


def _values(answers: Iterable[Answer], question: str) -> list[Any]:
    return [answer.values.get(question) for answer in answers if answer.values.get(question) not in (None, "")]


def _texts(answers: Iterable[Answer], question: str) -> list[str]:
    return [text for text in (str(value).strip() for value in _values(answers, question)) if text]


def unify_record(kind: str, record: PulledRecord, config: UnifyConfig) -> Unified:
    """Apply the module's rules to one record."""
    answers = sorted((a for a in record.answers if a.status in (SUBMITTED, DISCARDED)), key=lambda a: a.updated_at)
    submitted = [a for a in answers if a.status == SUBMITTED]
    result = Unified(record, "accepted", submitted=len(submitted), discarded=len(answers) - len(submitted))
    if not answers:
        result.outcome = "unanswered"
        return result
    try:
        if _vote("submit vs discard", [a.status for a in answers], config.tie_rule) == DISCARDED:
            result.outcome = "discarded"
            return result
        ratings = [float(v) for v in _values(submitted, schemas.QUALITY if kind == "text" else schemas.RATING)]
        if ratings and kind != "comparison":
            result.rating = statistics.fmean(ratings) if config.rating == "mean" else statistics.median(ratings)
        if kind == "text":
            result.decision = _vote("keep vs discard", _values(submitted, schemas.DECISION), config.tie_rule)
            if result.decision == "discard":
                result.outcome = "discarded"
        elif kind == "instruction":
            corrections = _texts(submitted, schemas.CORRECTION)
            result.correction = _vote("corrections", corrections, config.tie_rule) if corrections else None
        else:
            candidates = record.candidates()
            rankings = [rank_vector(v, candidates) for v in _values(submitted, schemas.RANKING)]
            if not rankings:
                result.outcome = "unanswered"
                return result
            if config.ranking == "mean_rank":
                result.ranks = mean_ranks(rankings)
            else:
                result.ranks = list(_vote("rankings", rankings, config.tie_rule))
            corrections = _texts(submitted, schemas.BEST_CORRECTION)
            result.correction = _vote("better responses", corrections, config.tie_rule) if corrections else None
    except _Tie as tie:
        result.outcome, result.reason = "disagreement", str(tie)
    return result


def unify(kind: str, records: Iterable[PulledRecord], config: UnifyConfig) -> list[Unified]:
    return [unify_record(kind, record, config) for record in records]


# ---------------------------------------------------------------------------- agreement


def _units(kind: str, records: Sequence[PulledRecord]) -> dict[str, tuple[str, dict[Hashable, dict[str, Any]]]]:
    """question -> (level of measurement, unit -> {user: value}) over submitted (and discarded) answers."""
    status: dict[Hashable, dict[str, Any]] = {}
    questions: dict[str, tuple[str, dict[Hashable, dict[str, Any]]]] = {"status": ("nominal", status)}
    rated = {"text": schemas.QUALITY, "instruction": schemas.RATING}.get(kind)
    if kind == "text":
        questions[schemas.DECISION] = ("nominal", {})
    if rated:
        questions[rated] = ("ordinal", {})
    if kind == "comparison":
        questions[schemas.RANKING] = ("ordinal", {})
    for record in records:
        candidates = record.candidates() if kind == "comparison" else []
        for answer in record.answers:
            if answer.status not in (SUBMITTED, DISCARDED):
                continue
            status.setdefault(record.id, {})[answer.user] = answer.status
            if answer.status != SUBMITTED:
                continue
            for question, (_, units) in questions.items():
                value = answer.values.get(question)
                if question == "status" or value in (None, ""):
                    continue
                if question == schemas.RANKING:
                    for candidate, rank in zip(candidates, rank_vector(value, candidates), strict=True):
                        units.setdefault((record.id, candidate), {})[answer.user] = rank
                else:
                    units.setdefault(record.id, {})[answer.user] = value
    return questions


def _alpha(level: str, units: Mapping[Hashable, Mapping[str, Any]]) -> dict[str, Any]:
    import krippendorff
    import numpy as np

    pairable = [u for u in units.values() if len(u) >= 2]
    pairs = [(a, b) for u in pairable for a, b in itertools.combinations(u.values(), 2)]
    figure: dict[str, Any] = {
        "level": level,
        "units": len(pairable),
        "alpha": None,
        "pairwise_agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
    }
    if not pairable:
        return figure
    users = sorted({user for u in pairable for user in u})
    domain = sorted({value for u in pairable for value in u.values()}, key=str)
    code = {value: i for i, value in enumerate(domain)} if level == "nominal" else None
    matrix = np.full((len(users), len(pairable)), np.nan)
    for j, unit in enumerate(pairable):
        for user, value in unit.items():
            matrix[users.index(user), j] = code[value] if code else float(value)
    with contextlib.suppress(ValueError):  # one value throughout: agreement is perfect but alpha is undefined
        figure["alpha"] = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))
    return figure


def agreement(kind: str, records: Sequence[PulledRecord]) -> dict[str, dict[str, Any]]:
    """Krippendorff's alpha and pairwise agreement per question (see the module docstring)."""
    return {question: _alpha(level, units) for question, (level, units) in _units(kind, records).items()}


def annotator_counts(records: Iterable[PulledRecord]) -> dict[str, dict[str, int]]:
    """user -> {submitted, discarded, draft} response counts."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        for answer in record.answers:
            counts.setdefault(answer.user, Counter())[answer.status] += 1
    return {user: {s: counts[user][s] for s in (SUBMITTED, DISCARDED, DRAFT)} for user in sorted(counts)}


def outcome_counts(unified: Iterable[Unified]) -> dict[str, int]:
    counts = Counter(u.outcome for u in unified)
    return {outcome: counts[outcome] for outcome in ("accepted", "discarded", "unanswered", "disagreement")}
