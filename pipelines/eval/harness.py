"""The seam to EleutherAI's lm-evaluation-harness: ARC, HellaSwag, MMLU, TruthfulQA... on the compared models.

    pip install lm-eval          # optional, not a project dependency
    python -m pipelines.eval compare --models smollm2-135m-instruct runs/demo/sft --names base sft \\
        --output_dir runs/demo/comparison --lm_eval_tasks arc_easy,hellaswag --lm_eval_limit 200

The harness runs its own tasks through its own Python API (`lm_eval.evaluator.simple_evaluate` with its
`hf` model type on each model folder); nothing here re-implements a task. Its task data comes from the
Hugging Face hub, so it needs the package and the network: without either, the command stops before
generating anything with one line that says what is missing. The results land in `comparison.json`
under `lm_eval` and in the report.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.cli import UserError
from pipelines.models import resolve_model

_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def parse_tasks(text: str) -> list[str]:
    return [task.strip() for task in text.split(",") if task.strip()]


def check_available(tasks: Sequence[str]) -> None:
    """Raise a one-line `UserError` unless lm_eval is installed and the hub can be reached."""
    wanted = ",".join(tasks)
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            f"--lm_eval_tasks {wanted} needs lm-evaluation-harness, which is not installed: "
            "`pip install lm-eval` (optional, not a project dependency), or leave the flag out"
        )
    offline = [name for name in _OFFLINE if os.environ.get(name, "0").lower() in {"1", "true", "yes"}]
    if offline:
        raise UserError(
            f"--lm_eval_tasks {wanted} downloads its task data from the Hugging Face hub, but "
            f"{offline[0]}=1 is set: unset {' and '.join(offline)} on a machine with network access"
        )
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=10).close()
    except OSError as err:
        raise UserError(
            f"--lm_eval_tasks {wanted} needs the Hugging Face hub for its task data, "
            f"and {constants.ENDPOINT} is not reachable ({err})"
        ) from err


def run_tasks(
    models: Mapping[str, str], tasks: Sequence[str], limit: int | None, batch_size: int
) -> dict[str, dict[str, Any]]:
    """{model name: lm_eval's `results` (task -> {"acc,none": ..., ...})}, one harness run per model."""
    from lm_eval import evaluator

    results = {}
    for name, path in models.items():
        print(f"lm-evaluation-harness: {', '.join(tasks)} on {name}", flush=True)
        output = evaluator.simple_evaluate(
            model="hf",
            model_args={"pretrained": resolve_model(path), "dtype": "float32"},
            tasks=list(tasks),
            limit=limit,
            batch_size=batch_size,
        )
        results[name] = output["results"]
    return results
