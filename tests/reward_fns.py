"""Rule-based rewards used by the PPO tests (importable as `tests.reward_fns:<name>`)."""


def short_answers(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter is better: a reward a policy can learn in a few dozen updates."""
    return [-len(response) / 40 for response in responses]


def wrong_count(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]


def not_numbers(prompts: list[str], responses: list[str]) -> list[str]:
    return ["high" for _ in responses]


def recorded_short_answers(prompts: list[str], responses: list[str]) -> list[float]:
    """`short_answers`, and every call's responses appended as one JSON line to
    `$PPO_RESPONSES_DIR/rank<RANK>.jsonl`: what each process sampled, call by call."""
    import json
    import os
    from pathlib import Path

    folder = Path(os.environ["PPO_RESPONSES_DIR"])
    with (folder / f"rank{os.environ.get('RANK', '0')}.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(responses) + "\n")
    return short_answers(prompts, responses)
