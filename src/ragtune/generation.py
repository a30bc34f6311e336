"""Batched greedy generation shared by eval, ask, serve and the local `hf` generator.

Left padding so every row's prompt ends at the same position, KV cache on, rows sorted by
length so a batch wastes little padding, and each row stops at EOS (or the chat template's
end of turn) or at any stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    for i in eos if isinstance(eos, list) else [eos]:
        if i is not None:
            ids.add(int(i))
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    ids.discard(tokenizer.pad_token_id)  # a pad that equals a stop id would end every row
    return sorted(ids)


class FirstTokenBias:
    """A logits processor adding a fixed bias to some token ids at the first generated
    position only: the calibrated abstention rule (`ragtune.abstain`) makes the refusal's
    first token more or less likely, and the model completes whichever answer wins."""

    def __init__(self, bias: dict[int, float], prompt_width: int) -> None:
        self.bias, self.width = bias, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] != self.width:
            return scores
        scores = scores.clone()
        for token, b in self.bias.items():
            scores[:, token] += b
        return scores


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: Any = None,
    first_token_bias: dict[int, float] | None = None,
) -> list[str]:
    """Greedy continuations of tokenised prompts, in the order given."""
    return generate_scored(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, progress,
                           first_token_bias)[0]


@torch.no_grad()
def generate_scored(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: Any = None,
    first_token_bias: dict[int, float] | None = None,
    gap_token: int | None = None,
) -> tuple[list[str], list[float]]:
    """Greedy continuations, and with `gap_token` each prompt's first-step margin of that token:
    its logit minus the best other token's (before any bias). A positive margin means greedy
    decoding starts with it."""
    from transformers import LogitsProcessorList

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[str] = [""] * len(prompts)
    gaps: list[float] = [0.0] * len(prompts) if gap_token is not None else []
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        processors = LogitsProcessorList([FirstTokenBias(first_token_bias, width)] if first_token_bias else [])
        res = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
            use_cache=True,
            logits_processor=processors,
            output_logits=gap_token is not None,
            return_dict_in_generate=True,
        )
        gen = res.sequences[:, width:]
        for r, i in enumerate(idx):
            out[i] = _cut(tokenizer, gen[r].tolist(), stops, stop_strings)
            if gap_token is not None:
                gaps[i] = token_margin(res.logits[0][r].float(), gap_token)
        if progress is not None:
            progress(len(idx))
    return out, gaps


def token_margin(logits: torch.Tensor, token: int) -> float:
    """How far `token`'s logit is above (positive) or below the best other token's."""
    other = logits.clone()
    other[token] = -torch.inf
    return float(logits[token] - other.max())


def _cut(tokenizer: Any, ids: list[int], stops: list[int], stop_strings: Sequence[str]) -> str:
    for j, t in enumerate(ids):
        if t in stops:
            ids = ids[:j]
            break
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for s in stop_strings:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()
