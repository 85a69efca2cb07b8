"""Rule-based rewards used by the PPO tests (importable as `tests.reward_fns:<name>`)."""


def short_answers(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter is better: a reward a policy can learn in a few dozen updates."""
    return [-len(response) / 40 for response in responses]


def wrong_count(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]


def not_numbers(prompts: list[str], responses: list[str]) -> list[str]:
    return ["high" for _ in responses]
