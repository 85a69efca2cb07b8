"""The three kinds of Argilla dataset that feed the three stages, declared as data with their guidelines.

- `text` (pretraining text -> continued pretraining): field `content`; annotators keep or discard it and
  may rate its quality.
- `instruction` (instruction pairs -> SFT): fields `instruction`, `context` (optional), `response`;
  annotators rate the response and may rewrite it.
- `comparison` (comparisons -> reward model): field `prompt` and candidates `response_1..response_N`;
  annotators rank the candidates (ties allowed) and may write a better response than the best one.

Question and field names are the contract between push, unify and export: they live here only, with the
columns of pushed data that carry a judgement (`LABEL_COLUMNS`) and the agent names of suggestions.
Each kind has one required question (`REQUIRED`: Argilla publishes no dataset without one, and a
submitted answer must fill it); the others may stay empty.
The SDK's settings objects need a connected client, so `settings_for` is called after connecting.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argilla as rg

KINDS = ("text", "instruction", "comparison")
MAX_CANDIDATES = 8

# text
CONTENT = "content"
DECISION = "decision"
DECISION_LABELS = {"keep": "Keep: worth training on", "discard": "Discard: noise, boilerplate or harmful"}
QUALITY = "quality"
TEXT_METADATA = ("source", "domain")
# instruction
INSTRUCTION, CONTEXT, RESPONSE = "instruction", "context", "response"
RATING = "rating"
CORRECTION = "corrected_response"
# comparison
PROMPT = "prompt"
RANKING = "ranking"
BEST_CORRECTION = "corrected_best"

REQUIRED = {"text": DECISION, "instruction": RATING, "comparison": RANKING}
RATING_VALUES = (1, 2, 3, 4, 5)
# Pushed data's columns that carry a judgement: column -> the question it answers. A comparison's ranking
# comes from its candidate columns instead: chosen over rejected, a `ranks` list, or `scores` (highest first).
LABEL_COLUMNS = {
    "text": {DECISION: DECISION, "keep": DECISION, QUALITY: QUALITY},
    "instruction": {RATING: RATING, CORRECTION: CORRECTION, "correction": CORRECTION},
    "comparison": {BEST_CORRECTION: BEST_CORRECTION, "better_response": BEST_CORRECTION},
}
# Suggestion agents: Argilla allows letters, digits, spaces and - _ : . / in at most 200 characters.
AGENT_MAX_LENGTH = 200
_AGENT_ALLOWED = re.compile(r"[^A-Za-z0-9 _:./-]")

GUIDELINES = {
    "text": """\
## Pretraining text: keep or discard

Each record is a passage that may be used for continued pretraining.

- **Keep** readable, informative text in the expected language and domain.
- **Discard** boilerplate (menus, cookie banners, navigation), spam, machine-generated noise,
  truncated fragments, personal data, or harmful content.
- **Quality** (1-5, optional): 1 = unusable, 3 = acceptable, 5 = excellent writing a model should imitate.

Use the *Discard* button only for records you cannot judge at all (wrong language, empty).
""",
    "instruction": """\
## Instruction pairs: rate and correct the response

Each record is an instruction (with optional context) and a response a model should learn to give.

- **Rating** (1-5): 1 = wrong or harmful, 3 = correct but could be better, 5 = exactly what an expert
  would answer.
- **Corrected response**: if the response is wrong or can be improved, write the response you would
  want the model to give. Leave it empty when the response is fine as it is: the original is kept.
- - Use the *Discard* button when the instruction itself is unusable; discarded records are not trained on.
- A rating or correction already filled in is a suggestion (its agent names where it comes from): check it.
""",
    "comparison": """\
## Comparisons: rank the responses

Each record is a prompt and several candidate responses.

- **Ranking**: put the best response first. Give two responses the same rank only when you truly
  cannot prefer one (tied responses are never used as a training pair).
- **Better response** (optional): if every candidate is flawed, write a response better than the one
  you ranked first; it is then preferred to all of them.
- A ranking already filled in is a suggestion: its agent says whose (`reward-model: ...` for the loop's
  reward model, with its scores; `import: ...` for imported judgements). Rank by your own judgement.
""",
}


@dataclasses.dataclass(frozen=True)
class KindColumns:
    """The columns a kind needs from the pushed data, for error messages before anything is sent."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def describe(self) -> str:
        optional = f" (optional: {', '.join(self.optional)})" if self.optional else ""
        return " + ".join(self.required) + optional


EXPECTED_COLUMNS = {
    "text": KindColumns(("text|content",), TEXT_METADATA),
    "instruction": KindColumns(("instruction|prompt|question|input", "response|completion|answer|output"), (CONTEXT,)),
    "comparison": KindColumns(
        ("prompt|question|instruction|input|query", "chosen+rejected | responses | response_1..response_N"),
        ("scores",),
    ),
}


def agent_name(text: str) -> str:
    """`text` as a suggestion agent: characters Argilla refuses become '-', long names keep their end."""
    return _AGENT_ALLOWED.sub("-", text)[-AGENT_MAX_LENGTH:].strip() or "unknown"


def import_agent(source: str) -> str:
    """The agent of judgements imported by `annotation push` from `source` (a file or dataset spec)."""
    return agent_name(f"import: {source}")


def candidate_names(count: int) -> list[str]:
    return [f"response_{i}" for i in range(1, count + 1)]


def kind_of_fields(field_names: list[str]) -> str | None:
    """Which kind a dataset on the server is, from its field names (None: not made by this package)."""
    if CONTENT in field_names:
        return "text"
    if INSTRUCTION in field_names and RESPONSE in field_names:
        return "instruction"
    if PROMPT in field_names and "response_1" in field_names:
        return "comparison"
    return None


def settings_for(kind: str, candidates: int = 2, min_submitted: int = 1) -> rg.Settings:
    """The Argilla settings of a kind: fields, questions, metadata, guidelines and overlap."""
    import argilla as rg

    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}")
    common: dict[str, Any] = {
        "guidelines": GUIDELINES[kind],
        "distribution": rg.TaskDistribution(min_submitted=min_submitted),
        "allow_extra_metadata": True,
    }
    if kind == "text":
        return rg.Settings(
            fields=[rg.TextField(name=CONTENT, title="Text", use_markdown=False)],
            questions=[
                rg.LabelQuestion(name=DECISION, title="Keep this text for training?", labels=DECISION_LABELS),
                rg.RatingQuestion(
                    name=QUALITY,
                    title="Quality (1 = unusable, 5 = excellent; optional)",
                    values=list(RATING_VALUES),
                    required=False,
                ),
            ],
            metadata=[rg.TermsMetadataProperty(name=name) for name in TEXT_METADATA],
            **common,
        )
    if kind == "instruction":
        return rg.Settings(
            fields=[
                rg.TextField(name=INSTRUCTION, title="Instruction"),
                rg.TextField(name=CONTEXT, title="Context", required=False),
                rg.TextField(name=RESPONSE, title="Response"),
            ],
            questions=[
                rg.RatingQuestion(name=RATING, title="How good is the response? (1-5)", values=list(RATING_VALUES)),
                rg.TextQuestion(
                    name=CORRECTION,
                    title="Corrected response (leave empty if the response is fine)",
                    required=False,
                ),
            ],
            **common,
        )
    if not 2 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"a comparison has 2 to {MAX_CANDIDATES} candidates, not {candidates}")
    names = candidate_names(candidates)
    return rg.Settings(
        fields=[
            rg.TextField(name=PROMPT, title="Prompt"),
            *(rg.TextField(name=name, title=f"Response {i}") for i, name in enumerate(names, start=1)),
        ],
        questions=[
            rg.RankingQuestion(
                name=RANKING,
                title="Rank the responses (best first)",
                values={name: f"Response {i}" for i, name in enumerate(names, start=1)},
            ),
            rg.TextQuestion(
                name=BEST_CORRECTION,
                title="A better response than your first choice (optional)",
                required=False,
            ),
        ],
        metadata=[
            rg.FloatMetadataProperty(name=f"score_{i}", title=f"Model score {i}") for i in range(1, len(names) + 1)
        ],
        **common,
    )
