"""Training rows: labels built at preprocessing, batches planned per optimizer step.

Labels come from `prompts.encode_example` when the dataset is tokenised (prompt -100, answer
and end-of-answer trained), never in a collator, so padding or packing cannot change them.
Batches are planned per optimizer step: the step's examples are fixed first (grouped by
length), then split into micro-batches (and across processes), so batch size x gradient
accumulation x processes only decides how a step's work is divided, not what it is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragtune.errors import RagtuneError
from ragtune.prompts import IGNORE_INDEX, Passage, PromptTemplate, encode_example

MEGABATCH = 32  # steps whose examples are sorted together by length (randomness vs padding)


@dataclass
class Encoded:
    """A tokenised split: ids and labels per example, and what was dropped and why."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    dropped_too_long: int = 0
    dropped_no_target: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def trained_tokens(self, indices: Sequence[int]) -> int:
        """Positions whose next token is trained (the answer and its end), over `indices`."""
        return sum(sum(t != IGNORE_INDEX for t in self.labels[i][1:]) for i in indices)


def check_template(tokenizer: Any, template: PromptTemplate, prompts: Sequence[str]) -> None:
    """The dataset's prompts must come from this tokenizer's template (no train/serve drift).

    Re-render a probe with the tokenizer used for training: every prompt must carry the same
    instruction and end with the same generation-prompt tail (the chat template's assistant
    header, or the plain "### Answer:" heading). Dates some templates insert are allowed to differ.
    """
    if template.style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise RagtuneError(
            "the dataset was rendered with a chat template but this tokenizer has none; "
            "train with the base model the dataset was built for, or rebuild the dataset"
        )
    probe = template.render(tokenizer, "\u2063Q", [Passage(title="\u2063T", text="\u2063X")])
    tail = probe.rsplit("\u2063Q", 1)[1]  # the last question: question_first asks it twice
    bad = sum(1 for p in prompts if not (p.endswith(tail) and template.system in p))
    if bad:
        raise RagtuneError(
            f"{bad} of {len(prompts)} prompts were not rendered with this tokenizer's "
            "template; rebuild the dataset with the base model you train (`ragtune build`)"
        )


def encode_rows(rows: Any, tokenizer: Any, template: PromptTemplate, max_length: int | None) -> Encoded:
    """Tokenise `prompt` / `completion` rows. Rows over `max_length` are dropped and counted:
    cutting them would lose the question or the answer (the failures PEERS.md lists)."""
    prompts, completions = list(rows["prompt"]), list(rows["completion"])
    check_template(tokenizer, template, prompts[:50])
    enc = Encoded([], [])
    for p, c in zip(prompts, completions, strict=True):
        e = encode_example(tokenizer, p, c, template)
        if max_length and len(e["input_ids"]) > max_length:
            enc.dropped_too_long += 1
            continue
        if all(x == IGNORE_INDEX for x in e["labels"][1:]):
            enc.dropped_no_target += 1
            continue
        enc.input_ids.append(e["input_ids"])
        enc.labels.append(e["labels"])
    return enc


def plan_steps(
    lengths: Sequence[int], step_size: int, seed: int, epoch: int, group_by_length: bool, drop_last: bool = False
) -> list[list[int]]:
    """Example indices of every optimizer step of one epoch, deterministic in (seed, epoch).

    With length grouping, a megabatch of steps is sorted by length so each step holds examples
    of similar length (little padding); the order of steps stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = step_size * MEGABATCH
        order = [i for s in range(0, len(order), span) for i in sorted(order[s : s + span], key=lambda j: -lengths[j])]
    steps = [order[s : s + step_size] for s in range(0, len(order), step_size)]
    if drop_last and steps and len(steps[-1]) < step_size:
        steps.pop()
    if group_by_length:
        rng.shuffle(steps)
    return steps


def split_step(step: Sequence[int], lengths: Sequence[int], n_micro: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one step: sorted by length, cut into world x n_micro
    near-equal parts, every world-th part for this rank."""
    ordered = sorted(step, key=lambda j: -lengths[j])
    parts = world * n_micro
    bounds = [round(k * len(ordered) / parts) for k in range(parts + 1)]
    pieces = [ordered[bounds[k] : bounds[k + 1]] for k in range(parts)]
    return [p for p in pieces[rank::world]]


def cap_tokens(micro: Sequence[int], lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Cut a micro-batch (sorted longest first) into pieces whose padded size, rows x longest
    row, stays within `max_tokens`; a row longer than that goes alone. Activation memory
    follows the padded size, so a memory budget holds whatever the rows' lengths, and since a
    step's loss is a sum over its examples the pieces add up to the same gradient."""
    if not max_tokens:
        return [list(micro)] if micro else []
    ordered = sorted(micro, key=lambda j: -lengths[j])
    pieces: list[list[int]] = []
    for j in ordered:
        if pieces and (len(pieces[-1]) + 1) * lengths[pieces[-1][0]] <= max_tokens:
            pieces[-1].append(j)
        else:
            pieces.append([j])
    return pieces


def pack(indices: Sequence[int], lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing packing of examples into rows of at most `row_tokens` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for j in sorted(indices, key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[j] <= free:
                rows[r].append(j)
                room[r] -= lengths[j]
                break
        else:
            rows.append([j])
            room.append(row_tokens - lengths[j])
    return rows


def collate(
    enc: Encoded, indices: Sequence[int], pad_id: int, packing: bool, row_tokens: int | None = None
) -> dict[str, Any]:
    """Tensors for one micro-batch. Targets are gathered here (positions whose next token is
    trained), so the model computes the LM head only there.

    Unpacked: one example per row, right padding, no mask (causal attention suffices).
    Packed: several examples per row, positions restarting at 0 for each, and a 4-D
    block-diagonal causal mask (True = may attend), so examples never see each other.
    """
    lengths = enc.lengths
    rows = pack(indices, lengths, row_tokens or max(lengths[j] for j in indices)) if packing else [[j] for j in indices]
    width = max(sum(lengths[j] for j in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)  # example slot per token, -1 = pad
    flat_pos, target, example = [], [], []
    slot = 0
    for r, row in enumerate(rows):
        at = 0
        for j in row:
            n = lengths[j]
            ids[r, at : at + n] = torch.tensor(enc.input_ids[j])
            pos[r, at : at + n] = torch.arange(n)
            seg[r, at : at + n] = slot
            labels = enc.labels[j]
            for t in range(1, n):  # token t is predicted from position t - 1
                if labels[t] != IGNORE_INDEX:
                    flat_pos.append(r * width + at + t - 1)
                    target.append(labels[t])
                    example.append(slot)
            at += n
            slot += 1
    batch = {
        "input_ids": ids,
        "position_ids": pos,
        "target_pos": torch.tensor(flat_pos, dtype=torch.long),
        "target_ids": torch.tensor(target, dtype=torch.long),
        "target_example": torch.tensor(example, dtype=torch.long),
        "n_examples": torch.tensor(slot),
        "example_index": torch.tensor([j for row in rows for j in row], dtype=torch.long),  # slot -> example
        "n_tokens": torch.tensor(sum(lengths[j] for j in indices)),
    }
    if packing:
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        mask = same & causal
        mask |= torch.eye(width, dtype=torch.bool)  # pad rows attend to themselves: no NaN
        batch["attention_mask"] = mask[:, None]
    else:
        # Right padding under a causal mask: real tokens never attend to the pads after them,
        # so no padding mask is needed and SDPA takes its fused causal kernel (no L x L mask).
        batch["attention_mask"] = None
        batch["position_ids"] = None
    return batch
