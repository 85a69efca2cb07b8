"""One HTML page per run folder: what its training runs and model comparisons produced, readable offline.

    python -m pipelines.eval report --run_dir runs/demo        # -> runs/demo/report.html
    # `python -m pipelines.eval compare ... --output_dir D` writes D/report.html itself

The page recomputes nothing: every number in it is printed from the JSON the stages wrote —
`summary.json` (a run's final figures), `comparison.json` (per-model metrics, win rates by the
verifier and the reward model, failures by category) — and the plots are drawn from
`metrics.jsonl` (training curves) and `generations.jsonl` (response lengths). Each number's cell
names its file and JSON path (`data-file`, `data-path`), so a test or a reader can check it.
The plots are PNGs embedded as base64 and the styles are inline: the single file opens without
network access, from disk or as a CI artifact.

Found under the run folder, and for a comparison also in the compared models' own folders:
- every `metrics.jsonl` / `summary.json`: curves (loss, learning rate; reward-model accuracy and
  margin; PPO reward, KL, response length, entropy, losses), the summary figures, `reward_eval.png`;
- every `comparison.json`: the metric table per model, win rates, a response-length histogram,
  error analysis (failure categories with examples) and a sample of the generations side by side;
- every `rounds.json` (`python -m annotation loop`): one row per round of the human-feedback loop with
  each of its numbers (agreement with the reward model's suggestions, alpha, accuracies, reward, KL).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipelines.cli import UserError
from pipelines.eval.curves import CURVES as PPO_CURVES
from pipelines.eval.curves import HELD_OUT as PPO_HELD_OUT
from pipelines.models import PROJECT_ROOT
from pipelines.runner import METRICS_FILE, SUMMARY_FILE

COMPARISON_FILE = "comparison.json"
GENERATIONS_FILE = "generations.jsonl"
REPORT_FILE = "report.html"
ROUNDS_FILE = "rounds.json"
SIDE_BY_SIDE_ROWS = 12  # a sample: the full list is in generations.md / generations.jsonl

# Training-curve panels: (title, metrics.jsonl keys drawn together); a panel with no points is left out.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "eval_loss")),
    ("learning rate", ("learning_rate",)),
    ("token accuracy", ("mean_token_accuracy", "eval_mean_token_accuracy")),
    ("pairwise accuracy", ("accuracy", "eval_accuracy")),
    ("reward margin", ("margin", "eval_margin")),
    *((title, (key,)) for key, title in (*PPO_CURVES, *PPO_HELD_OUT)),
    ("PPO losses", ("loss/policy", "loss/value")),
)
METRIC_LABELS = {
    "exact_match": "exact match",
    "bleu": "BLEU",
    "execution_accuracy": "execution accuracy",
    "answer_accuracy": "answer accuracy",
    "reward_mean": "reward-model score",
    "token_accuracy": "token accuracy (gold)",
    "perplexity": "perplexity (gold)",
    "mean_new_tokens": "new tokens (mean)",
    "eos_rate": "eos rate",
    "generation_tokens_per_second": "tokens/s",
}
JUDGES = {"verifier": "by the verifier ({})", "reward_model": "by the reward model (higher score)"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { font-family: ui-monospace, monospace; font-size: .9em; white-space: pre-wrap; max-width: 28em; }
img { max-width: 100%; border: 1px solid #eee; }
.ok { color: #17653a; font-weight: 600; } .bad { color: #a32020; font-weight: 600; } .muted { color: #777; }
nav a { margin-right: 1em; } .groups { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
details { margin: .3em 0 .8em; } summary { cursor: pointer; }
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}): was its run interrupted while writing it?") from err


# -- what a run folder holds ----------------------------------------------------------------


def _not_checkpoint(path: Path) -> bool:
    return not any(part.startswith("checkpoint-") for part in path.parts)


def _model_folder(name: str) -> Path | None:
    """The folder a comparison's model (or reward model) string points at, if it is on this machine."""
    for candidate in (Path(name), PROJECT_ROOT / name, PROJECT_ROOT / "models" / name):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def find_sources(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(training run folders, comparison folders) under `run_dir`, plus the runs a comparison compared."""
    comparisons = sorted(
        {p.parent.resolve() for p in run_dir.rglob(COMPARISON_FILE) if _not_checkpoint(p.relative_to(run_dir))}
    )
    runs = {
        p.parent.resolve()
        for name in (METRICS_FILE, SUMMARY_FILE)
        for p in run_dir.rglob(name)
        if _not_checkpoint(p.relative_to(run_dir))
    }
    for folder in comparisons:
        data = _read_json(folder / COMPARISON_FILE)
        for name in [*data.get("models", {}).values(), data.get("reward_model")]:
            model = _model_folder(name) if name else None
            if model and ((model / METRICS_FILE).is_file() or (model / SUMMARY_FILE).is_file()):
                runs.add(model)
    # oldest first: the order the pipeline ran in (sft, reward, ppo)
    ordered = sorted(runs - set(comparisons), key=lambda p: max(f.stat().st_mtime for f in _run_files(p)))
    return ordered, comparisons


def _run_files(folder: Path) -> list[Path]:
    return [f for f in (folder / METRICS_FILE, folder / SUMMARY_FILE) if f.is_file()]


def _stage(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    keys = {key for row in rows for key in row} | set(summary)
    if "objective/kl" in keys or "eval_after" in keys:
        return "PPO"
    if "pairwise" in keys or "margin" in keys:
        return "reward model"
    return "SFT"


# -- HTML pieces ------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """How the page prints a number: integers as they are, floats with 3 decimals (4 significant digits
    when very large or small)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value) or (value and not 1e-3 <= abs(value) < 1e5):
        return f"{value:.4g}"
    return f"{value:.3f}"


def _num(value: Any, file: str, path: Sequence[str | int]) -> str:
    """A number cell that says where its value comes from."""
    return (
        f'<td class="num" data-file="{_esc(file)}" data-path="{_esc(json.dumps(list(path)))}">{_esc(fmt(value))}</td>'
    )


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(text: Any, cls: str = "") -> str:
    return f'<td class="{cls}">{_esc(text)}</td>' if cls else f"<td>{_esc(text)}</td>"


def _png(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _embed_png(path: Path, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- training runs ----------------------------------------------------------------------------


def _curves(rows: Sequence[dict[str, Any]], title: str) -> str:
    panels = []
    for name, keys in PANELS:
        series = {key: [(r["step"], r[key]) for r in rows if key in r and "step" in r] for key in keys}
        series = {key: points for key, points in series.items() if points}
        if series:
            panels.append((name, series))
    if not panels:
        return '<p class="muted">no step-wise metrics to plot</p>'
    plt = _pyplot()
    columns = min(len(panels), 4)
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3 * lines), squeeze=False)
    for axis, (name, series) in zip(axes.flat, panels, strict=False):
        for key, points in series.items():
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if len(points) < 3 else ".", label=key)
        axis.set(title=name, xlabel="step")
        if len(series) > 1:
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    fig.tight_layout()
    return _png(fig, f"training curves of {title}")


def _flatten(value: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """(JSON path, number) for every numeric leaf; lists (e.g. calibration bins) are plotted elsewhere."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, (*path, key))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def _run_section(folder: Path, run_dir: Path) -> tuple[str, str]:
    """(heading, HTML) of one training run."""
    rows = read_jsonl(folder / METRICS_FILE) if (folder / METRICS_FILE).is_file() else []
    summary = _read_json(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).is_file() else {}
    label = _relative(folder, run_dir)
    parts = []
    if rows:
        parts.append(f"<h3>Training curves <span class='muted'>({_esc(METRICS_FILE)}, {len(rows)} records)</span></h3>")
        parts.append(_curves(rows, label))
    if (folder / "ppo_curves.png").is_file():
        parts.append("<h3>PPO curves</h3>" + _embed_png(folder / "ppo_curves.png", "PPO curves"))
    if (folder / "reward_eval.png").is_file():
        parts.append("<h3>Reward model on held-out pairs</h3>" + _embed_png(folder / "reward_eval.png", "reward eval"))
    if (folder / GENERATIONS_FILE).is_file():
        title = f"Response lengths of the run's own before/after generations ({GENERATIONS_FILE})"
        parts.append(f"<h3>{_esc(title)}</h3>" + _length_histogram(folder / GENERATIONS_FILE))
    if summary:
        file = f"{label}/{SUMMARY_FILE}"
        groups: dict[str, list[list[str]]] = {}
        for path, value in _flatten(summary):
            group = path[0] if len(path) > 1 else "run"
            groups.setdefault(group, []).append([_cell(".".join(path[1:]) or path[0]), _num(value, file, path)])
        tables = "".join(f'<div class="group">{_table([group, "value"], rows)}</div>' for group, rows in groups.items())
        parts.append(f"<h3>Final figures <span class='muted'>({_esc(SUMMARY_FILE)})</span></h3>")
        parts.append(f'<div class="groups">{tables}</div>')
    return f"{_stage(rows, summary)} run: {label}", "\n".join(parts)


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir.resolve())) or "."
    except ValueError:
        return str(path)


# -- comparisons ------------------------------------------------------------------------------


def _length_histogram(generations: Path) -> str:
    rows = read_jsonl(generations)
    lengths: dict[str, list[int]] = {}
    for row in rows:
        for name, count in row.get("new_tokens", {}).items():
            lengths.setdefault(name, []).append(count)
    if not lengths:
        return f'<p class="muted">{_esc(generations.name)} has no per-response lengths (written before they were)</p>'
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 3.2))
    top = max(max(v) for v in lengths.values())
    bins = range(0, top + 2, max(1, (top + 1) // 25))
    axis.hist(list(lengths.values()), bins=bins, label=list(lengths))  # bars side by side, one colour per model
    axis.set(title=f"Response length per model ({len(rows)} prompts)", xlabel="new tokens", ylabel="responses")
    axis.legend()
    fig.tight_layout()
    return _png(fig, "response length histogram")


def _metric_label(key: str) -> str:
    for accuracy in ("execution_accuracy", "answer_accuracy"):
        if key.startswith(f"{accuracy}_"):
            return f"{METRIC_LABELS[accuracy]}: {key.removeprefix(f'{accuracy}_')}"
    return METRIC_LABELS.get(key, key)


def _metrics_table(data: dict[str, Any], file: str) -> str:
    metrics = data["metrics"]
    keys = list(dict.fromkeys(key for values in metrics.values() for key in values))
    rows = [
        [_cell(name)] + [_num(values[k], file, ["metrics", name, k]) if k in values else _cell("") for k in keys]
        for name, values in metrics.items()
    ]
    return _table(["model", *(_metric_label(k) for k in keys)], rows)


def _win_rate_tables(data: dict[str, Any], file: str) -> str:
    parts = []
    for judge, rates in data.get("win_rates", {}).items():
        if not rates:
            continue
        rows = [
            [_cell(pair)]
            + [_num(rate[k], file, ["win_rates", judge, pair, k]) for k in ("wins", "ties", "losses")]
            + [_num(rate["win_rate"], file, ["win_rates", judge, pair, "win_rate"])]
            for pair, rate in rates.items()
        ]
        judges_by = (data.get("verifier") or {}).get("judges_by", "execution result")  # older files: SQL only
        parts.append(f"<h4>Win rate {_esc(JUDGES.get(judge, judge).format(judges_by))}</h4>")
        parts.append(_table(["challenger vs baseline", "wins", "ties", "losses", "win rate (ties count ½)"], rows))
    return "\n".join(parts) or '<p class="muted">one model only: nothing to win against</p>'


def _error_analysis(data: dict[str, Any], file: str) -> str:
    errors: dict[str, dict[str, Any]] = data.get("errors", {})
    if not errors:
        return '<p class="muted">no verifier in this comparison (`eval compare --verifier`: sql or math)</p>'
    names = list(errors)
    categories = [c for c in next(iter(errors.values())) if any(errors[n][c]["count"] for n in names)]
    if not categories:
        return '<p class="ok">no failures: every answer returned the gold result</p>'
    rows = [
        [_cell(c)] + [_num(errors[n][c]["count"], file, ["errors", n, c, "count"]) for n in names] for c in categories
    ]
    parts = [
        "<p>Each failed answer counted once, under the first category that applies "
        "(order and rules: <code>pipelines/tasks/textsql/evaluate.py</code>).</p>",
        _table(["category", *names], rows),
    ]
    for i, category in enumerate(categories):
        examples = [
            [
                _cell(name),
                _cell(ex["question"]),
                _cell(ex["gold"], "text"),
                _cell(ex["prediction"] or "∅ (empty)", "text"),
            ]
            for name in names
            for ex in errors[name][category]["examples"]
        ]
        counts = ", ".join(f"{n}: {errors[n][category]['count']}" for n in names)
        parts.append(
            f"<details{' open' if i == 0 else ''}><summary><b>{_esc(category)}</b> ({_esc(counts)}): examples</summary>"
        )
        parts.append(_table(["model", "question", "gold SQL", "prediction"], examples) + "</details>")
    return "\n".join(parts)


def _verdict(per_prompt: dict[str, list[Any]], i: int, file: str, name: str) -> str:
    parts = []
    if "correct" in per_prompt:
        if per_prompt["correct"][i]:
            parts.append('<span class="ok">✓ correct</span>')
        else:
            parts.append(f'<span class="bad">✗ {_esc(per_prompt["category"][i])}</span>')
    if "reward" in per_prompt:
        path = json.dumps(["per_prompt", name, "reward", i])
        value = per_prompt["reward"][i]
        parts.append(f'reward <span data-file="{_esc(file)}" data-path="{_esc(path)}">{_esc(fmt(value))}</span>')
    return "<br>" + " · ".join(parts) if parts else ""


def _side_by_side(folder: Path, data: dict[str, Any], file: str) -> str:
    path = folder / GENERATIONS_FILE
    if not path.is_file():
        return f'<p class="muted">no {GENERATIONS_FILE}</p>'
    rows = read_jsonl(path)
    names = list(data["metrics"])
    per_prompt = data.get("per_prompt", {})
    body = []
    for i, row in enumerate(rows[:SIDE_BY_SIDE_ROWS]):
        cells = [_cell(row["prompt"]), _cell(row["reference"], "text")]
        for name in names:
            length = row.get("new_tokens", {}).get(name)
            eos = row.get("hit_eos", {}).get(name)
            meta = f" <span class='muted'>({length} tokens{'' if eos in (None, True) else ', no eos'})</span>"
            verdict = _verdict(per_prompt.get(name, {}), i, file, name)
            text = _esc(row[name]) or "<span class='muted'>∅</span>"
            cells.append(f'<td class="text">{text}{meta if length is not None else ""}{verdict}</td>')
        body.append(cells)
    note = f"the first {len(body)} of {len(rows)} prompts; all of them in generations.md"
    return f"<p class='muted'>{_esc(note)}</p>" + _table(["prompt", "reference", *names], body)


def _lm_eval_table(data: dict[str, Any], file: str) -> str:
    results: dict[str, dict[str, dict[str, Any]]] = data.get("lm_eval", {})
    if not results:
        return ""
    names = list(results)
    keys = sorted(
        {
            (task, metric)
            for per_model in results.values()
            for task, values in per_model.items()
            for metric, value in values.items()
            if isinstance(value, int | float) and "stderr" not in metric
        }
    )
    rows = [
        [_cell(task), _cell(metric)]
        + [
            _num(results[n][task][metric], file, ["lm_eval", n, task, metric])
            if metric in results[n].get(task, {})
            else _cell("")
            for n in names
        ]
        for task, metric in keys
    ]
    return "<h3>lm-evaluation-harness</h3>" + _table(["task", "metric", *names], rows)


def _comparison_section(folder: Path, run_dir: Path) -> tuple[str, str]:
    """(heading, HTML) of one model comparison."""
    data = _read_json(folder / COMPARISON_FILE)
    label = _relative(folder, run_dir)
    file = f"{label}/{COMPARISON_FILE}"
    models = ", ".join(f"{name} = {path}" for name, path in data.get("models", {}).items())
    judge = f"; reward model {data['reward_model']}" if data.get("reward_model") else ""
    return f"Model comparison: {label}", "\n".join(
        [
            f"<p>{_esc(data.get('prompts', '?'))} held-out prompts from {_esc(data.get('data', '?'))}; "
            f"{_esc(models)}{_esc(judge)}.</p>",
            "<h3>Metrics per model</h3>",
            _metrics_table(data, file),
            "<h3>Win rates</h3>",
            _win_rate_tables(data, file),
            "<h3>Response lengths</h3>",
            _length_histogram(folder / GENERATIONS_FILE) if (folder / GENERATIONS_FILE).is_file() else "",
            "<h3>Error analysis</h3>",
            _error_analysis(data, file),
            "<h3>Generations side by side</h3>",
            _side_by_side(folder, data, file),
            _lm_eval_table(data, file),
        ]
    )


def _rounds_section(path: Path, run_dir: Path) -> tuple[str, str]:
    """(heading, HTML) of a loop's table: a row per round, a column per number it recorded."""
    rows = [dict(_flatten(row)) for row in json.loads(path.read_text(encoding="utf-8"))]
    file = f"{_relative(path.parent, run_dir)}/{ROUNDS_FILE}"
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cells = [[_num(row[c], file, [i, *c]) if c in row else _cell("") for c in columns] for i, row in enumerate(rows)]
    return f"Human-feedback loop: {_relative(path.parent, run_dir)}", _table([".".join(c) for c in columns], cells)


# -- the page ---------------------------------------------------------------------------------


def build_report(run_dir: Path) -> str:
    if not run_dir.is_dir():
        raise UserError(f"--run_dir {run_dir} is not a folder: give a run folder such as runs/demo-...")
    runs, comparisons = find_sources(run_dir)
    if not runs and not comparisons:
        raise UserError(
            f"nothing to report in {run_dir}: no {METRICS_FILE}, {SUMMARY_FILE} or {COMPARISON_FILE} below it "
            "(point --run_dir at a stage's output_dir or a demo run folder)"
        )
    rounds = sorted(p for p in run_dir.rglob(ROUNDS_FILE) if _not_checkpoint(p.relative_to(run_dir)))
    sections = [_rounds_section(path, run_dir) for path in rounds]
    sections += [_comparison_section(folder, run_dir) for folder in comparisons]
    sections += [_run_section(folder, run_dir) for folder in runs]
    nav = "".join(f'<a href="#s{i}">{_esc(heading)}</a>' for i, (heading, _) in enumerate(sections))
    body = "\n".join(f'<h2 id="s{i}">{_esc(heading)}</h2>\n{part}' for i, (heading, part) in enumerate(sections))
    title = f"Report: {run_dir.resolve().name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='muted'>{_esc(run_dir.resolve())} · written "
        f"{_esc(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>python -m pipelines.eval report</code>; "
        "every number is read from the JSON file named in its cell's data-file attribute</p>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the page (default `<run_dir>/report.html`) and return its path."""
    page = build_report(Path(run_dir))
    output = Path(output) if output is not None else Path(run_dir) / REPORT_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return output
