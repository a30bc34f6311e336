#!/usr/bin/env bash
# SmolLM2-135M-Instruct tuned on synthetic questions about the SQuAD 2.0 sample's paragraphs
# (no human question seen), then base vs tuned on the sample's 234 human questions.
# Run from the repository root with ../shared/data beside it:  bash bench/squad_sample.sh
set -euo pipefail
SQUAD=${SQUAD:-../shared/data/squad2-sample/dev-sample-v2.0.json}
python bench/squad_kb.py "$SQUAD" runs/squad-kb
ragtune run bench/squad_sample.yaml
ragtune eval --run runs/squad-sample --qa "$SQUAD" --max-new-tokens 24 --out runs/squad-sample/eval-squad
ragtune eval --run runs/squad-sample --qa "$SQUAD" --max-new-tokens 24 --no-abstention-rule \
    --out runs/squad-sample/eval-squad-no-rule
