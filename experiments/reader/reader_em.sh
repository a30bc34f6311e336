#!/usr/bin/env bash
# The pipeline check on a reader base model: extractive synth, build with 2 BM25
# distractors, LoRA within a wall-clock budget, eval base vs tuned on the held-out split.
#   experiments/reader/reader_em.sh MODEL_DIR RUN_DIR [DOCS] [TRAIN_MINUTES]
# Chunks are ~96 reader tokens (~35 words), the passage size the reader recipe trains on,
# so prompt + answer fit the model's trained length (640). An existing RUN/chunks.jsonl is reused.
# Run from the repository root. Env: LIMIT (synth chunks), EVAL_LIMIT, EVAL_SPLIT. synth --limit takes the first chunks, i.e.
# few documents: with small limits the split by document can leave the test split nearly
# empty; use EVAL_SPLIT=validation (documents also held out of LoRA training) then.
set -euo pipefail
M=$1; R=$2; DOCS=${3:-../shared/data/python-docs}; MIN=${4:-10}
export PYTHONPATH=src
rt() { python -m ragtune "$@"; }
[ -f "$R/chunks.jsonl" ] || rt ingest "$DOCS" --run "$R" --tokenizer "$M" --chunk-tokens 96 --max-chunk-tokens 128 --overlap-tokens 16
rt synth --run "$R" --limit "${LIMIT:-4000}"
# build asks the way the reader's RAG-shaped rows did (its saved ragtune_prompt.json)
QF=$(python -c 'import json, sys; print("--question-first" if json.load(open(sys.argv[1] + "/ragtune_prompt.json")).get("question_first") else "--question-last")' "$M")
rt build --run "$R" --tokenizer "$M" --k-distractors 2 --max-length 640 "$QF"
rt train --run "$R" --base-model "$M" --max-minutes "$MIN" --lr "${LR:-1e-3}"
rt eval --run "$R" --base-model "$M" --split "${EVAL_SPLIT:-test}" --limit "${EVAL_LIMIT:-200}" --max-new-tokens 40 --no-robustness
