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


def plot_curves(metrics_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for axis, (key, title) in zip(axes, CURVES, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            axis.plot(*zip(*points, strict=True), marker=".")
        axis.set(title=title, xlabel="PPO update")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
