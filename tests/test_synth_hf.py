"""The `hf` generator over the real tiny model: batched, never crashing on garbage replies."""

from __future__ import annotations

import asyncio

import pytest
from test_synth_openai import CHUNKS

from ragtune.config import SynthConfig
from ragtune.records import QAItem
from ragtune.synth.base import Rejection
from ragtune.synth.hf_backend import HFComplete, make_hf

pytestmark = pytest.mark.slow


def test_concurrent_calls_are_generated_in_batches(tiny_model_dir):
    from ragtune.generation import generate
    from ragtune.models import load_model
    from ragtune.prompts import render_messages

    model, tok = load_model(tiny_model_dir, precision="fp32")
    msgs = [[{"role": "user", "content": f"Passage {i}: lists are mutable."}] for i in range(6)]

    async def run() -> tuple[list[str], list[int]]:
        complete = HFComplete(model, tok, max_new_tokens=8, batch_size=4)
        replies = await asyncio.gather(*(complete(m, False) for m in msgs))
        await complete.aclose()
        return [r.text for r in replies], complete.batches

    texts, batches = asyncio.run(run())
    assert batches == [4, 2]
    # the same text as generating each prompt alone: left padding does not change a reply
    alone = [generate(model, tok, [render_messages(tok, m, None)], max_new_tokens=8)[0] for m in msgs]
    assert texts == alone


def test_hf_generator_yields_rows_or_counted_rejections(tiny_model_dir):
    cfg = SynthConfig(
        generator="hf", model=str(tiny_model_dir), max_tokens=16, questions_per_chunk=1, batch_size=4, concurrency=2
    )
    gen = make_hf(cfg, CHUNKS[:4])
    rows = list(gen.generate(CHUNKS[:4]))
    assert rows and all(isinstance(r, (QAItem, Rejection)) for r in rows)
    assert gen.stats_dict()["questions"]["calls"] == 4
    assert all(r.raw is not None for r in rows if isinstance(r, Rejection) and r.reason == "parse_failure")
