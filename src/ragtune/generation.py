"""Generation for eval, ask, serve and the local `hf` generator: one implementation.

`generate_batch` continues one batch of tokenised prompts: left padding so every row's prompt
ends at the same position, KV cache on, greedy or sampled, each row ending at EOS (or the chat
template's end of turn), at its token budget, or when the caller halts it; its text is cut at
the first stop string. `generate` and `greedy_completions` run any number of prompts through it,
rows sorted by length so a batch wastes little padding. `generate_stream` runs one prompt with
the same settings and the same cut, handing out its text as it decodes (serve's streamed replies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ragtune.prompts import PromptTemplate

# Per row of a batch, whether to end it now (its client left, its time ran out).
Halt = Callable[[], Sequence[bool]]


@dataclass(frozen=True)
class Decoding:
    """How prompts are continued; every row of one batch shares it."""

    max_new_tokens: int = 48
    stop_strings: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


@dataclass
class Completion:
    """One row's continuation, with what an API reports about it."""

    text: str
    n_tokens: int  # generated tokens, the stop token included
    finish_reason: str = "length"  # "stop": end of turn or a stop string; "length": the token budget
    confidence: float | None = None  # mean log-probability per token, when asked for
    support: float | None = None  # mean log-probability of the prompt's question span, when given one


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


def stop_strings(template: PromptTemplate) -> tuple[str, ...]:
    """Stop strings of answers asked with `template`: a plain-template model that runs on writes
    the next heading; cut there."""
    return ("\n### ",) if template.style == "plain" else ()


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string in `text` begins, else None."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def pad_token_id(tokenizer: Any, stop_ids: Sequence[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def greedy_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: Any = None,
    with_confidence: bool = False,
    spans: Sequence[tuple[int, int] | None] | None = None,
) -> list[Completion]:
    """Greedy completions of tokenised prompts, in the order given; with `with_confidence`, each
    one's mean log-probability per token (up to its stop token): how sure the model is of it;
    with `spans` (token positions of each prompt's question), how well the context predicts it."""
    decoding = Decoding(max_new_tokens, tuple(stop_strings))
    return generate_all(model, tokenizer, prompts, decoding, batch_size, with_confidence, progress, spans)


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], **options: Any) -> list[str]:
    """The texts of `greedy_completions` (options: max_new_tokens, batch_size, stop_strings, progress)."""
    return [c.text for c in greedy_completions(model, tokenizer, prompts, **options)]


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    decoding: Decoding,
    batch_size: int = 16,
    with_confidence: bool = False,
    progress: Any = None,
    spans: Sequence[tuple[int, int] | None] | None = None,
) -> list[Completion]:
    """Every prompt's completion, in the order given, generated longest first in batches."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[Completion | None] = [None] * len(prompts)
    stop_ids = stop_token_ids(tokenizer, model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        done = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in idx],
            decoding,
            with_confidence,
            stop_ids=stop_ids,
            spans=[spans[i] for i in idx] if spans is not None else None,
        )
        for i, completion in zip(idx, done, strict=True):
            out[i] = completion
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    decoding: Decoding,
    with_confidence: bool = False,
    halt: Halt | None = None,
    stop_ids: Sequence[int] | None = None,
    spans: Sequence[tuple[int, int] | None] | None = None,
) -> list[Completion]:
    """One left-padded batch of prompts continued together. `stop_ids` default to
    `stop_token_ids`; `with_confidence` scores each row (`mean_logprobs`); `spans` score each
    row's span of prompt tokens (`span_logprobs`) from the same prefill."""
    stop_ids = list(stop_ids if stop_ids is not None else stop_token_ids(tokenizer, model))
    pad = pad_token_id(tokenizer, stop_ids)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    device = next(model.parameters()).device
    with _prompt_states(model, enabled=spans is not None) as states:
        res = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            **_generate_kwargs(decoding, stop_ids, pad, halt),
            output_logits=with_confidence,
            return_dict_in_generate=True,
        )
    gen = res.sequences[:, width:]
    sure = mean_logprobs(res.logits, gen, stop_ids) if with_confidence else [None] * len(prompts)
    support: list[float | None] = [None] * len(prompts)
    if spans is not None and states:
        offsets = [width - len(p) for p in prompts]  # left padding moves each row's prompt right
        padded = [None if s is None else (s[0] + o, s[1] + o) for s, o in zip(spans, offsets, strict=True)]
        support = span_logprobs(model, states[0], res.sequences, padded)
    return [_finished(tokenizer, gen[r].tolist(), stop_ids, decoding, sure[r], support[r]) for r in range(len(prompts))]


def _finished(
    tokenizer: Any,
    tokens: list[int],
    stop_ids: Sequence[int],
    decoding: Decoding,
    confidence: float | None,
    support: float | None = None,
) -> Completion:
    """A row's text up to its stop token, cut at the first stop string, with its counts."""
    finish = "length"
    for k, t in enumerate(tokens):
        if t in stop_ids:
            tokens, finish = tokens[:k], "stop"
            break
    n_tokens = min(len(tokens) + (finish == "stop"), decoding.max_new_tokens)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cut = first_stop(text, decoding.stop_strings)
    if cut is not None:
        text, finish = text[:cut], "stop"
    return Completion(text.strip(), n_tokens, finish, confidence, support)


def _generate_kwargs(decoding: Decoding, stop_ids: list[int], pad: int, halt: Halt | None) -> dict[str, Any]:
    """`model.generate` settings; top_k is off so sampling is exactly temperature + top_p (OpenAI's)."""
    sample = decoding.sampled
    kwargs: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": sample,
        "temperature": decoding.temperature if sample else None,
        "top_p": decoding.top_p if sample else None,
        "top_k": None,
        "eos_token_id": stop_ids,
        "pad_token_id": pad,
        "use_cache": True,
    }
    if halt is not None:
        kwargs["stopping_criteria"] = _stopping(halt)
    return kwargs


def _stopping(halt: Halt) -> Any:
    """Stopping criteria that end each row `halt` marks, at the next step."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            return torch.tensor(list(halt()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Halt()])


@dataclass
class _Stream:
    """What a streamed row has produced so far."""

    text: str = ""
    n_tokens: int = 0
    finish_reason: str = "length"
    cut: bool = False  # a stop string was found: the text is final


@torch.no_grad()
def generate_stream(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    decoding: Decoding,
    on_text: Callable[[str, bool], None] | None = None,
    halt: Callable[[], bool] | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] | None = None,
) -> Completion:
    """One prompt continued as `generate_batch` would, calling `on_text(text so far, final)`
    whenever decoded text is complete; `final` once a stop string has cut it. The text is not
    stripped (its pieces may already be sent). `seed` seeds torch first, so a sample repeats."""
    stop_ids = list(stop_ids if stop_ids is not None else stop_token_ids(tokenizer, model))
    state = _Stream()
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    if seed is not None:
        torch.manual_seed(seed)
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        streamer=_streamer(tokenizer, state, stop_ids, decoding.stop_strings, on_text),
        **_generate_kwargs(
            decoding, stop_ids, pad_token_id(tokenizer, stop_ids), lambda: [state.cut or (halt is not None and halt())]
        ),
    )
    return Completion(state.text, state.n_tokens, state.finish_reason)


def _streamer(
    tokenizer: Any,
    state: _Stream,
    stop_ids: list[int],
    stops: Sequence[str],
    on_text: Callable[[str, bool], None] | None,
) -> Any:
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if state.cut:  # past a stop string: the rest is not part of the reply
                return
            state.text += text
            cut = first_stop(state.text, stops)
            if cut is not None:
                state.text, state.finish_reason, state.cut = state.text[:cut], "stop", True
            if on_text is not None:
                on_text(state.text, state.cut)

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                state.n_tokens += int(value.numel())
                if any(int(t) in stop_ids for t in value.reshape(-1)):
                    state.finish_reason = "stop"
            super().put(value)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


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


@contextmanager
def _prompt_states(model: Any, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """The decoder's final hidden states over the whole prompt, kept from its first call (the
    prefill): `generate` computes them but turns only the last position into logits. Empty when
    not `enabled` or the model has no separate decoder to hook."""
    states: list[torch.Tensor] = []
    decoder = model.get_decoder() if enabled and hasattr(model, "get_decoder") else None
    if decoder is None:
        yield states
        return

    def keep(module: Any, args: Any, output: Any) -> None:
        if not states:
            states.append(output[0])

    handle = decoder.register_forward_hook(keep)
    try:
        yield states
    finally:
        handle.remove()


def span_logprobs(
    model: Any, states: torch.Tensor, ids: torch.Tensor, spans: Sequence[tuple[int, int] | None]
) -> list[float | None]:
    """Per row, the mean log-probability of the tokens `ids[row, start:end]` given what precedes
    them, from the decoder's hidden states `states` (rows x positions x hidden); None where the
    row has no span. Only the span's positions go through the LM head."""
    head = model.get_output_embeddings()
    if states.shape[-1] != getattr(head, "in_features", states.shape[-1]):  # the hook caught something else
        return [None] * len(spans)
    out: list[float | None] = []
    for r, span in enumerate(spans):
        if span is None or span[1] <= span[0] or span[0] < 1:
            out.append(None)
            continue
        start, end = span
        logp = head(states[r, start - 1 : end - 1]).float().log_softmax(-1)
        target = ids[r, start:end].to(logp.device)
        out.append(float(logp.gather(-1, target[:, None]).mean()))
    return out
