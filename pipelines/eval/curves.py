"""PPO training curves from metrics.jsonl: what a PPO user looks at first (reward, KL, length, entropy);
ppo_curves.png and the HTML report draw the same ones."""

from __future__ import annotations

import json
from pathlib import Path

CURVES = (
    ("objective/scores", "reward score"),
    ("objective/kl", "KL to reference (per sequence)"),
    ("response/length_mean", "response length (tokens)"),
    ("objective/entropy", "entropy"),
)


# Greedy answers to the held-out prompts along training (PPO's eval_every): the learned reward against
# the verifier, drawn together so the point where the reward stops tracking real quality shows.
HELD_OUT = (
    ("eval/score_mean", "held-out reward score"),
    ("eval/verifier_accuracy", "held-out verifier accuracy"),
)


def plot_curves(metrics_path: Path, out_path: Path) -> Path:
    """The training curves, plus the over-optimisation panel when held-out evaluations were logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    held_out = {key: [(r["step"], r[key]) for r in rows if key in r] for key, _ in HELD_OUT}
    panels = len(CURVES) + bool(held_out[HELD_OUT[0][0]])
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2))
    for axis, (key, title) in zip(axes, CURVES, strict=False):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            axis.plot(*zip(*points, strict=True), marker=".")
        axis.set(title=title, xlabel="PPO update")
    if panels > len(CURVES):
        score_axis = axes[-1]
        score_axis.plot(*zip(*held_out["eval/score_mean"], strict=True), marker="o", color="tab:blue")
        score_axis.set(title="held-out: reward vs verifier", xlabel="PPO update")
        score_axis.set_ylabel("reward-model score", color="tab:blue")
        if held_out["eval/verifier_accuracy"]:
            accuracy_axis = score_axis.twinx()
            accuracy_axis.plot(*zip(*held_out["eval/verifier_accuracy"], strict=True), marker="s", color="tab:red")
            accuracy_axis.set_ylabel("verifier accuracy", color="tab:red")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
