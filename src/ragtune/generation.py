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


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: Any = None,
) -> list[str]:
    """Greedy continuations of tokenised prompts, in the order given."""
    return generate_scored(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, progress,
                           with_confidence=False)[0]


@torch.no_grad()
def generate_scored(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: Any = None,
    with_confidence: bool = True,
) -> tuple[list[str], list[float]]:
    """Greedy continuations, and with `with_confidence` each one's mean log-probability per
    token (up to its stop token): how sure the model is of what it wrote."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[str] = [""] * len(prompts)
    confidence: list[float] = [0.0] * len(prompts) if with_confidence else []
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
        res = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
            use_cache=True,
            output_logits=with_confidence,
            return_dict_in_generate=True,
        )
        gen = res.sequences[:, width:]
        sure = mean_logprobs(res.logits, gen, stops) if with_confidence else []
        for r, i in enumerate(idx):
            out[i] = _cut(tokenizer, gen[r].tolist(), stops, stop_strings)
            if with_confidence:
                confidence[i] = sure[r]
        if progress is not None:
            progress(len(idx))
    return out, confidence


def mean_logprobs(step_logits: Sequence[torch.Tensor], tokens: torch.Tensor, stops: Sequence[int]) -> list[float]:
    """Per row, the mean log-probability of the generated tokens before the first stop token
    (the stop token itself included when the answer is empty)."""
    logp = torch.stack([s.float().log_softmax(-1) for s in step_logits], 1)  # rows x steps x vocab
    chosen = logp.gather(-1, tokens[:, : logp.shape[1], None].to(logp.device))[..., 0]
    out = []
    for r, row in enumerate(tokens[:, : logp.shape[1]].tolist()):
        n = next((k for k, t in enumerate(row) if t in stops), len(row))
        out.append(float(chosen[r, : max(n, 1)].mean()))
    return out


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
