"""How good a reward model is on held-out pairs: pairwise accuracy, score histograms, calibration.

The scores come from `pipelines.runner.score_conversations`, the one scoring function of the project."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pairwise_report(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], out_dir: Path, bins: int = 5
) -> dict[str, Any]:
    """Accuracy, a chosen-vs-rejected histogram and a margin calibration curve (PNG + numbers)."""
    chosen, rejected = np.asarray(chosen_scores), np.asarray(rejected_scores)
    margin = chosen - rejected
    report: dict[str, Any] = {
        "pairs": len(margin),
        "accuracy": float((margin > 0).mean()) if len(margin) else 0.0,
        # the Bradley-Terry loss RewardTrainer minimises, on held-out pairs
        "loss": float(np.logaddexp(0.0, -margin).mean()) if len(margin) else 0.0,
        "mean_margin": float(margin.mean()) if len(margin) else 0.0,
        "chosen_mean": float(chosen.mean()) if len(margin) else 0.0,
        "rejected_mean": float(rejected.mean()) if len(margin) else 0.0,
    }
    # Calibration: does a larger |score gap| mean the model is more often right?
    edges = np.quantile(np.abs(margin), np.linspace(0, 1, bins + 1)) if len(margin) else np.zeros(bins + 1)
    calibration = []
    for low, high in itertools.pairwise(edges):
        inside = (np.abs(margin) >= low) & (np.abs(margin) <= high)
        if inside.any():
            calibration.append(
                {
                    "abs_margin_low": float(low),
                    "abs_margin_high": float(high),
                    "pairs": int(inside.sum()),
                    "accuracy": float((margin[inside] > 0).mean()),
                }
            )
    report["calibration"] = calibration
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = _plot(chosen, rejected, calibration, out_dir)
    (out_dir / "reward_eval.json").write_text(json.dumps(report, indent=2))
    return report


def _plot(chosen: np.ndarray, rejected: np.ndarray, calibration: list[dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=30)
    left.hist(chosen, bins=edges, alpha=0.6, label=f"chosen (mean {chosen.mean():.2f})")
    left.hist(rejected, bins=edges, alpha=0.6, label=f"rejected (mean {rejected.mean():.2f})")
    left.set(title="Reward scores on held-out pairs", xlabel="score", ylabel="pairs")
    left.legend()
    centres = [(c["abs_margin_low"] + c["abs_margin_high"]) / 2 for c in calibration]
    right.plot(centres, [c["accuracy"] for c in calibration], marker="o")
    right.set(
        title="Calibration", xlabel="|chosen - rejected| score (bin centre)", ylabel="pairwise accuracy", ylim=(0, 1.05)
    )
    right.axhline(0.5, color="grey", linestyle=":", label="chance")
    right.legend()
    fig.tight_layout()
    path = out_dir / "reward_eval.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]
