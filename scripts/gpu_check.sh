#!/usr/bin/env bash
# The GPU paths the CPU machine cannot run, in one go: each stage's default config (SFT, reward, PPO
# on the SFT and reward models it just trained) on 1 GPU in bf16, then, where there are several
# GPUs, the same under DDP, FSDP and DeepSpeed ZeRO-3 on all of them. After every run it prints one
# line: tokens/s (PPO: episodes/s and generated tokens/s too) and MFU against the GPUs' bf16 peak.
#
#   bash scripts/gpu_check.sh                      # after `make setup` (or scripts/setup.sh) on a CUDA machine
#   PEAK_TFLOPS=989 bash scripts/gpu_check.sh      # a GPU the table below does not know (dense bf16 TFLOP/s)
#   MODES="1gpu fsdp" bash scripts/gpu_check.sh    # some of 1gpu ddp fsdp zero3
#
# Needs torch with CUDA (setup.sh installs the CPU wheel: `pip install torch==2.13.0` from the CUDA index
# first) and, for ZeRO-3, `pip install deepspeed`. Runs go to $OUT (default runs/gpu-check/<mode>/<stage>);
# the lines are also appended to $OUT/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
    echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); nothing to check" >&2
    exit 2
fi
if [ -z "${MODES:-}" ]; then
    MODES="1gpu"
    if [ "$GPUS" -gt 1 ]; then MODES="1gpu ddp fsdp zero3"; fi
fi
mkdir -p "$OUT"

run_stage() {  # mode stage extra-args...
    local mode=$1 stage=$2
    shift 2
    local launcher=("$PY" -m)
    if [ "$mode" != 1gpu ]; then
        launcher=("$PY" -m accelerate.commands.launch --config_file "configs/accelerate/$mode.yaml" --num_processes "$GPUS" -m)
    fi
    local dir="$OUT/$mode/$stage"
    rm -rf "$dir"
    echo "== $mode $stage: ${launcher[*]} pipelines.$stage --config configs/$stage/default.yaml ..."
    "${launcher[@]}" "pipelines.$stage" --config "configs/$stage/default.yaml" --output_dir "$dir" \
        --precision bf16 --report_to none --save_strategy no "$@" >"$dir.log" 2>&1 ||
        { echo "FAILED: $mode $stage (log: $dir.log)"; tail -20 "$dir.log"; return 1; }
    "$PY" - "$mode" "$stage" "$dir" "$GPUS" <<'REPORT' | tee -a "$OUT/results.txt"
"""One line per run: throughput from the run's own summary/metrics; MFU = model FLOP/s / (GPUs x bf16 peak)."""
import json
import os
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pipelines.data.sources import read_jsonl
from pipelines.runner import render_prompts

mode, stage, run, gpus = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
gpus = 1 if mode == "1gpu" else gpus
name = torch.cuda.get_device_name(0)
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; PEAK_TFLOPS overrides
PEAKS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "4090": 165, "3090": 71}
peak = float(os.environ.get("PEAK_TFLOPS") or next((v for k, v in PEAKS.items() if k in name), 0))
with torch.device("meta"):  # N: the causal LM's parameters, tied embeddings once
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run)).parameters())
summary = json.loads((run / "summary.json").read_text())
if stage in ("sft", "reward"):
    tokens_per_s = summary["train"].get("train_tokens_per_second") or 0.0
    flops = 6 * params * tokens_per_s  # forward + backward per trained token
    line = f"{tokens_per_s:,.0f} train tokens/s"
else:
    config = yaml.safe_load((run / "run_config.yaml").read_text())
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "episodes_per_second" in r]
    steady = rows[1:] or rows  # the first update pays one-off costs
    episodes_per_s = sum(r["episodes_per_second"] for r in steady) / len(steady)
    response = sum(r["response/length_mean"] for r in steady) / len(steady)
    tokenizer = AutoTokenizer.from_pretrained(run)
    questions = [[{"role": "user", "content": r["question"]}] for r in read_jsonl(Path(config["dataset"]))[:256]]
    prompt = sum(len(t) for t in tokenizer(render_prompts(tokenizer, questions))["input_ids"]) / len(questions)
    sequence, trunks = prompt + response, 3 if config.get("shared_backbone") else 4
    # per episode: sampling (2N a token), the experience forwards (policy, value unless shared, reference,
    # reward: 2N a token each) and ppo_epochs training passes (6N a token; a separate value model doubles it)
    train = 6 * config.get("ppo_epochs", 1) * (1 if config.get("shared_backbone") else 2)
    flops = episodes_per_s * params * sequence * (2 + 2 * trunks + train)
    line = f"{episodes_per_s:.2f} episodes/s, {episodes_per_s * response:,.0f} generated tokens/s"
mfu = f"MFU {100 * flops / gpus / (peak * 1e12):.1f} % of {peak:g} TFLOP/s bf16" if peak else "MFU n/a: set PEAK_TFLOPS"
print(f"{mode:<5} {stage:<6} {name} x{gpus}: {line}, {mfu}")
REPORT
}

for mode in $MODES; do
    if [ "$mode" = zero3 ] && ! "$PY" -c "import deepspeed" 2>/dev/null; then
        echo "== zero3 skipped: pip install deepspeed"
        continue
    fi
    run_stage "$mode" sft --eval_generation_samples 16 || continue
    run_stage "$mode" reward --model_name_or_path "$OUT/$mode/sft" || continue
    run_stage "$mode" ppo --model_name_or_path "$OUT/$mode/sft" --reward_model_path "$OUT/$mode/reward" \
        --shared_backbone true --eval_prompts 16 || continue
done
echo "results: $OUT/results.txt"
