"""The one optimizer step (training_core): its schedule, accumulation and clipping (its place
below the stages: test_import_layers)."""

from __future__ import annotations

import pytest
import torch

from ragtune.training_core import _MALLOC_TRIM, HeapTrimmer, OptimizerStep, lr_schedule, resident_bytes


def test_the_schedule_warms_up_then_holds_or_decays_to_zero():
    assert [lr_schedule("constant", 4)(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear, cosine = lr_schedule("linear", 2, 10), lr_schedule("cosine", 2, 10)
    assert linear(2) == cosine(2) == 1.0
    assert linear(6) == pytest.approx(0.5) and cosine(6) == pytest.approx(0.5)
    assert linear(10) == 0.0 and cosine(10) == pytest.approx(0.0, abs=1e-12)
    assert lr_schedule("cosine", 0, 10)(0) == 1.0  # no warmup: the full rate from the first step


def _step(micro_batches: list[torch.Tensor], max_grad_norm: float | None = None) -> OptimizerStep:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    core = OptimizerStep(
        model.parameters(),
        lr=0.1,
        weight_decay=0.0,
        schedule=lr_schedule("constant", 0),
        max_grad_norm=max_grad_norm,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    n = sum(len(m) for m in micro_batches)

    def loss_of(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model(x).pow(2).sum() / n, len(x)  # each row's share of the step's mean

    kept = core.run(micro_batches, loss_of)
    assert kept == [len(m) for m in micro_batches]
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step
    return core


def _first_moment_norm(core: OptimizerStep) -> float:
    """After one AdamW step the first moment is (1 - beta1) x the gradient the step used."""
    moments = [core.optimizer.state[p]["exp_avg"] for p in core.params]
    return float(torch.linalg.vector_norm(torch.cat([m.flatten() for m in moments]))) / 0.1


def test_micro_batches_add_up_to_one_batch():
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    whole, split = _step([x]), _step([x[:3], x[3:5], x[5:]])
    for a, b in zip(whole.params, split.params, strict=True):
        assert torch.allclose(a, b, atol=1e-7)
    assert _first_moment_norm(whole) == pytest.approx(_first_moment_norm(split), rel=1e-6)
    assert whole.lr == 0.1


def test_clipping_bounds_the_gradient_norm():
    x = torch.full((4, 3), 100.0)
    assert _first_moment_norm(_step([x])) > 100
    assert _first_moment_norm(_step([x], max_grad_norm=0.5)) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.skipif(_MALLOC_TRIM is None or resident_bytes() is None, reason="glibc on Linux only")
def test_the_heap_trimmer_hands_freed_memory_back_past_its_slack():
    def heap_churn() -> tuple[int, bytearray]:
        """Allocate and free 200 MB of heap blocks (under mmap's threshold); the RSS they leave."""
        chunks = [bytearray(64 << 10) for _ in range(3200)]
        pin = bytearray(64 << 10)  # keeps the freed blocks off the heap's top, where free() would trim
        grown = resident_bytes()
        del chunks
        held = resident_bytes()
        assert held > grown - (50 << 20)  # glibc keeps what was freed
        return held, pin

    _MALLOC_TRIM(0)  # no free heap pages resident, whatever earlier tests left: the churn below grows RSS
    trim = HeapTrimmer(slack=64 << 20)
    trim()  # the first call reads the working set
    held, pin = heap_churn()
    trim()  # grown past the slack: trimmed
    assert resident_bytes() < held - (100 << 20) and trim.working_set is None
    held, pin2 = heap_churn()  # the next micro-batch faults its pages in again
    trim()  # ... and that is the working set, not growth: no trim
    assert resident_bytes() > held - (50 << 20) and trim.working_set is not None
    quiet = HeapTrimmer(slack=1 << 40)
    quiet()
    working_set = quiet.working_set
    quiet()  # within the slack: no trim, the working set stays
    assert quiet.working_set == working_set and pin and pin2
