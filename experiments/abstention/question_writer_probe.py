"""Can SmolLM2-135M-Instruct write a question for a given answer span? (answer-aware question
generation, the easiest form of the question writer's job: the sentence and the answer are given).

Prints, for the extractive generator's best span in the first sentences of a run's chunks, the
span, SmolLM2's greedy reply, and the sentence. Measured 2026-12-07 on the SQuAD sample's
chunks: 0 of 20 replies were a usable question ("What a delightful question! ...").

    python experiments/abstention/question_writer_probe.py --chunks RUN/chunks.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch

from ragtune.config import SynthConfig
from ragtune.models import load_model
from ragtune.records import Chunk
from ragtune.synth.extractive import ExtractiveGenerator

PROMPT = (
    'Sentence: {sentence}\n\nWrite one short question that is answered by "{answer}" in this sentence. '
    "Use your own words. Reply with the question only."
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", required=True, help="a run's chunks.jsonl")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=20, help="how many spans to ask about")
    args = p.parse_args()
    with open(args.chunks, encoding="utf-8") as f:
        chunks = [Chunk(**json.loads(line)) for line in f]
    spans = ExtractiveGenerator(SynthConfig(), chunks)
    model, tok = load_model(args.model)
    asked = [(c.sentence, c.answer) for chunk in chunks[::4] for c in spans.candidates(chunk)[:2]][: args.n]
    for sentence, answer in asked:
        messages = [{"role": "user", "content": PROMPT.format(sentence=sentence, answer=answer)}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(ids["input_ids"], max_new_tokens=32, do_sample=False)
        reply = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"{answer!r} | {' '.join(reply.split())} | {sentence[:100]}")


if __name__ == "__main__":
    main()
