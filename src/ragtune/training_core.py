"""The one optimizer step every ragtune training loop takes: AdamW, a warmup + decay LR
schedule, autocast, gradient accumulation over micro-batches, clipping.

`ragtune train` (train/engine.py, through `accelerate`) and causal-LM pretraining
(`models.pretrain_causal_lm`, for `ragtune tiny-model` and `ragtune pretrain`) differ in what a
micro-batch is and how its loss is computed, not in how a step is taken; so the step lives here,
below both, and the loops only say what to feed it. This module imports no ragtune stage.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch

Batch = TypeVar("Batch")
Kept = TypeVar("Kept")
Schedule = Callable[[int], float]  # step -> multiplier of the base learning rate


def lr_schedule(kind: str, warmup_steps: int, total_steps: int = 0) -> Schedule:
    """Linear warmup from 1/warmup_steps to 1 over the first `warmup_steps` steps, then
    "constant", "linear" decay to 0 at `total_steps`, or "cosine" decay to 0 at `total_steps`
    (a run of unknown length, such as a time-budgeted one, can only use "constant")."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Mixed precision in `dtype` (bf16 / fp16); fp32 runs without autocast."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Hands the heap's free pages back to the OS (glibc `malloc_trim`) once the process has
    grown `slack` bytes past its working set, read after the first micro-batch since the last
    trim.

    Each CPU micro-batch frees activations of another shape, and glibc keeps what it freed:
    LoRA on SmolLM2-135M grew from 2.6 to 5.8 GB RSS over 40 steps while its live memory stayed
    flat. A trim is not free (every page it returns is faulted in again by the next micro-batch),
    so it waits for the growth, not for the working set: the first policy measured the slack from
    the RSS just after a trim, which the next micro-batch's activations alone exceed, and so
    trimmed after nearly every micro-batch at 0.86-0.89x the untrimmed speed.
    """

    def __init__(self, slack: int = 1 << 30) -> None:
        self.slack = slack
        self.working_set: int | None = None  # RSS after the first micro-batch since the last trim

    def __call__(self) -> None:
        now = resident_bytes()
        if _MALLOC_TRIM is None or now is None:
            return
        if self.working_set is None:
            self.working_set = now
        elif now >= self.working_set + self.slack:
            _MALLOC_TRIM(0)
            self.working_set = None


class OptimizerStep:
    """AdamW with its LR schedule and gradient clipping, taking one step over a step's micro-batches.

    Without an accelerator it drives plain PyTorch; after `prepare(accelerator, module)` backward,
    clipping and the optimizer go through `accelerate`, so the same step runs under DDP / FSDP.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float,
        schedule: Schedule,
        max_grad_norm: float | None,
        device: torch.device,
        dtype: torch.dtype,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.optimizer: Any = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.max_grad_norm = max_grad_norm
        self.device, self.dtype = device, dtype
        self.accelerator: Any = None
        self.module: Any = None  # the accelerator-wrapped module whose gradient sync is skipped
        self.trim_heap = HeapTrimmer() if device.type == "cpu" else None

    def prepare(self, accelerator: Any, module: torch.nn.Module) -> Any:
        """Wrap `module` and the optimizer for `accelerator`; returns the wrapped module."""
        # The scheduler keeps the bare optimizer: the wrapper shares its param groups, so the
        # learning rates it sets are the ones the wrapped optimizer uses.
        self.module, self.optimizer = accelerator.prepare(module, self.optimizer)
        self.accelerator = accelerator
        return self.module

    def run(self, micro_batches: Sequence[Batch], loss_of: Callable[[Batch], tuple[torch.Tensor, Kept]]) -> list[Kept]:
        """Forward and backward every micro-batch (their gradients add up), then clip, step the
        optimizer and the schedule, and clear the gradients. `loss_of` returns the loss to
        backpropagate (already scaled to its share of the step) and what the caller keeps of it."""
        kept = []
        for k, micro in enumerate(micro_batches):
            with self._sync_unless(k < len(micro_batches) - 1), autocast(self.device, self.dtype):
                loss, keep = loss_of(micro)
                self._backward(loss)
            kept.append(keep)
            if self.trim_heap is not None:
                self.trim_heap()  # freed activations back to the OS before they pile up
        self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return kept

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _sync_unless(self, more_to_come: bool) -> AbstractContextManager:
        """Under DDP, gradients are all-reduced once per step, after its last micro-batch."""
        if more_to_come and self.accelerator is not None and self.accelerator.num_processes > 1:
            return self.accelerator.no_sync(self.module)
        return nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _clip(self) -> None:
        if not self.max_grad_norm:
            return
        if self.accelerator is not None:  # FSDP clips its shards itself
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
