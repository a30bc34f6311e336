"""`openai` generator: any OpenAI-compatible chat-completions endpoint, through
`ragtune.llm_client` (bounded, rate-limited, retried). A call that fails for good becomes a
counted rejection; a rejected key or unknown model stops the run with one clear line.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtune.config import SynthConfig
from ragtune.llm_client import OpenAIComplete, resolve_model
from ragtune.records import Chunk
from ragtune.synth.base import register_generator
from ragtune.synth.llm import LLMGenerator

QUESTIONS_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "questions",
        "schema": {
            "type": "object",
            "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
            "required": ["questions"],
            "additionalProperties": False,
        },
    },
}


@register_generator("openai")
def make_openai(cfg: SynthConfig, corpus: Sequence[Chunk]) -> LLMGenerator:
    model = resolve_model(cfg)
    return LLMGenerator(
        name="openai",
        cfg=cfg,
        corpus=corpus,
        model_id=model,
        make_complete=lambda: OpenAIComplete(cfg, model, schema=QUESTIONS_SCHEMA),
    )
