"""Answer-only loss that runs the LM head only where a token is trained.

RAG rows are mostly prompt: computing vocabulary logits for every position (what a causal-LM
forward with `labels` does) wastes most of the LM head and memory. `AnswerLoss` runs the
model body, gathers the hidden states at positions whose next token is trained, and applies
the output layer there only. It is an `nn.Module`, so DDP / FSDP wrap it and see every call.

Averaging (`train.loss_average`): by default each example's loss is the mean over its trained
tokens, and a step's loss is the mean over its examples, so every example weighs the same
whatever its answer length; "token" averages over every trained token of the step instead (what
transformers' causal-LM loss and TRL do). Either way padding, length grouping, packing,
micro-batching and the number of processes change nothing but speed: the caller's `scale` is
1 / (the step's examples, or its trained tokens), counted over the whole step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class AnswerLoss(nn.Module):
    def __init__(self, model: nn.Module, average: str = "example") -> None:
        super().__init__()
        self.model = model
        self.per_token = average == "token"

    def forward(self, batch: dict[str, torch.Tensor], scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sum of per-example losses, or of token losses with `average="token"`, x `scale`;
        per-example losses detached)."""
        lm = causal_lm(self.model)
        hidden = lm.get_decoder()(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        ).last_hidden_state
        picked = hidden.flatten(0, 1).index_select(0, batch["target_pos"])
        logits = lm.get_output_embeddings()(picked).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        token_loss = F.cross_entropy(logits, batch["target_ids"], reduction="none")
        n = int(batch["n_examples"])
        ex = batch["target_example"]
        counts = torch.zeros(n, device=token_loss.device).index_add_(0, ex, torch.ones_like(token_loss))
        per_example = torch.zeros(n, device=token_loss.device).index_add_(0, ex, token_loss) / counts
        total = token_loss.sum() if self.per_token else per_example.sum()
        return total * scale, per_example.detach()
