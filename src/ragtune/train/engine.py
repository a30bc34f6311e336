"""The training loop: a plain PyTorch loop driven through `accelerate.Accelerator`.

At this model size the HF Trainer's per-step machinery costs more than the model; a plain
loop also lets every invariant be stated in a few lines (see loss.py and data.py). Run under
`accelerate launch` it becomes DDP / FSDP without changes: each process takes its share of
every step's examples, and the loss is scaled so the averaged gradient equals one process's.

`FinetuneRecipe` is laid out like torchtune's recipes (setup, a loss step apart from the loop,
validation, checkpoints, finish); the optimizer step itself (AdamW, LR schedule, autocast,
accumulation, clipping) is `training_core.OptimizerStep`, shared with causal-LM pretraining.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.config import TrainConfig
from ragtune.errors import RagtuneError
from ragtune.models import load_causal_lm, load_tokenizer, pick_dtype, require_gpu
from ragtune.prompts import PromptTemplate
from ragtune.records import fsync_dir, read_jsonl, write_jsonl
from ragtune.train.data import Encoded, cap_tokens, collate, plan_steps, split_step
from ragtune.train.loss import AnswerLoss, causal_lm
from ragtune.training_core import OptimizerStep, autocast, lr_schedule

TRAIN_LOG = "training_log.jsonl"
STATE_FILE = "trainer_state.pt"
FINGERPRINT = "fingerprint.txt"  # in OUT/checkpoints: what its checkpoints were trained on


@dataclass
class TrainResult:
    out: str
    method: str
    stop_reason: str = ""
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    first_loss: float | None = None
    train_loss: float | None = None  # mean of the last 10 steps
    initial_eval_loss: float | None = None  # validation loss before the first step
    eval_loss: float | None = None  # final validation loss (mean of per-example losses)
    eval_token_loss: float | None = None  # final validation loss, mean over answer tokens
    best_eval_loss: float | None = None
    examples: int = 0
    tokens: int = 0  # real (non-pad) tokens seen, prompt included
    answer_tokens: int = 0  # trained tokens seen
    tokens_per_s: float = 0.0
    answer_tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    dtype: str = ""
    processes: int = 1
    dropped: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- model
def load_for_training(base_model: str, cfg: TrainConfig, device: torch.device) -> tuple[Any, Any, torch.dtype]:
    """Base model (+ LoRA / QLoRA adapters) and tokenizer. Frozen LoRA bases are held in the
    compute dtype (no cast per step); full fine-tuning keeps fp32 master weights."""
    compute = pick_dtype(cfg.precision, device)
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if cfg.method == "qlora":
        require_gpu("qlora (4-bit NF4 training)", "a CUDA GPU and bitsandbytes (pip install 'ragtune[gpu]')")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
        kwargs["device_map"] = {"": device.index or 0}
    kwargs["dtype"] = torch.float32 if cfg.method == "full" else compute
    tok = load_tokenizer(base_model)
    model = load_causal_lm(base_model, tok, **kwargs)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return model, tok, compute
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    targets = cfg.target_modules
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise RagtuneError(
            f"LoRA target modules {targets!r} do not fit this model ({e}); "
            "use 'all-linear' or names of its linear layers"
        ) from None
    return model, tok, compute


def no_lora_input_cast(model: Any, compute: torch.dtype) -> AbstractContextManager:
    """Within it, PEFT leaves LoRA layers' inputs in the compute dtype (a no-op in fp32).

    Every training and validation forward runs under autocast in `compute`, which casts a LoRA
    layer's input to `compute` for its matmul anyway; PEFT's own cast of that input to the fp32
    adapter's dtype only adds a copy per layer that backward keeps. Without it the losses are the
    same and SmolLM2-135M's peak RSS over 16 steps fell from 5.2 to 4.5 GB (and ran 2% faster).
    """
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=compute != torch.float32)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(
    loss_fn: AnswerLoss,
    enc: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
    max_tokens: int | None = None,
    desc: str | None = None,
) -> tuple[float, float]:
    """(mean of per-example losses, mean over answer tokens) on a tokenised split; with `desc`,
    a progress bar (a validation pass on long rows takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    was_training = loss_fn.training
    loss_fn.eval()
    order = sorted(range(len(enc)), key=lambda j: -enc.lengths[j])
    batches = [
        p
        for s in range(0, len(order), batch_size)
        for p in cap_tokens(order[s : s + batch_size], enc.lengths, max_tokens)
    ]
    ex_sum, tok_sum, n_tok = 0.0, 0.0, 0
    for idx in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False, file=sys.stderr):
        batch = to_device(collate(enc, idx, pad_id, False), device)
        with autocast(device, dtype):
            _, per_example = loss_fn(batch)
        counts = torch.bincount(batch["target_example"], minlength=len(per_example))
        ex_sum += float(per_example.sum())
        tok_sum += float((per_example * counts).sum())
        n_tok += int(counts.sum())
    loss_fn.train(was_training)
    return ex_sum / max(1, len(enc)), tok_sum / max(1, n_tok)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------- checkpoints
def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model: Any, tok: Any, template: PromptTemplate, state: dict[str, Any]) -> None:
    """Adapter (usable as is) + optimizer / scheduler / RNG state, written aside, fsynced and
    renamed in. The previous checkpoint is renamed to PATH.old (never deleted) before the new one
    takes its name, so a kill at any point leaves a complete checkpoint (`checkpoint_to_resume`)."""
    tmp = path.with_name(f"{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_files(tmp, model, tok, template)
    torch.save({**state, "trainable": _trainable_state(model)}, tmp / STATE_FILE)
    _fsync_tree(tmp)
    old = path.with_name(f"{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_to_resume(ckpt_dir: Path) -> Path | None:
    """`last`, or `last.old` when a kill fell between the two renames of save_checkpoint."""
    for name in ("last", "last.old"):
        if (ckpt_dir / name / STATE_FILE).is_file():
            return ckpt_dir / name
    return None


def save_model(out: Path, model: Any, tok: Any, template: PromptTemplate) -> None:
    """The final adapter (or model): written aside in OUT, fsynced, then each file renamed over
    its old version, so no file of OUT is ever half written."""
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".save-*"):  # left by a killed save
        shutil.rmtree(left, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".save-"))
    try:
        _save_files(tmp, model, tok, template)
        _fsync_tree(tmp)
        for f in sorted(tmp.iterdir()):
            if f.is_dir() and (out / f.name).is_dir():
                shutil.rmtree(out / f.name)
            os.replace(f, out / f.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_files(out: Path, model: Any, tok: Any, template: PromptTemplate) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    template.save(out)


def _fsync_tree(root: Path) -> None:
    for f in sorted(root.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state: tensors, dicts and numbers only. weights_only=True refuses
    pickled code, so a shared run folder cannot make this process run anything."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RagtuneError(
            f"{path} is not a plain trainer state ({first[:160]}); refusing to load it: "
            "delete that checkpoint folder or train with --restart"
        ) from None


_NOT_TRAJECTORY = {
    "resume",
    "max_minutes",
    "report_to",
    "eval_steps",
    "save_steps",
    "early_stopping_patience",
    "eval_limit",
}


def run_fingerprint(cfg: TrainConfig, train_enc: Encoded, model: Any) -> str:
    """What a checkpoint must match to be resumed: the settings that shape the trajectory, the
    training token ids, and the model's parameter names, shapes and sums (another base model differs)."""
    import hashlib

    h = hashlib.sha256(
        json.dumps(
            {k: v for k, v in cfg.model_dump().items() if k not in _NOT_TRAJECTORY}, sort_keys=True, default=str
        ).encode()
    )
    for ids, labels in zip(train_enc.input_ids, train_enc.labels, strict=True):
        h.update(json.dumps([ids, labels]).encode())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                h.update(f"{n}:{tuple(p.shape)}:{float(p.float().sum()):.6e}".encode())
    return h.hexdigest()[:32]


def _resume_point(ckpt_dir: Path, fingerprint: str, cfg: TrainConfig) -> Path | None:
    """The checkpoint to continue from: resuming is the default when one was saved with the
    same settings, data and base model; None to start over (and `_start_over`)."""
    stamp = ckpt_dir / FINGERPRINT
    found = checkpoint_to_resume(ckpt_dir)
    same = stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == fingerprint
    if found is not None and cfg.resume and same:
        return found
    if found is not None and cfg.resume:
        print(f"warning: {found} was saved with other settings, data or base model; starting over", file=sys.stderr)
    return None


def _start_over(ckpt_dir: Path, fingerprint: str) -> None:
    """Old checkpoints go before the new fingerprint is stamped, so a kill before the first new
    save cannot resume the old run with the new settings."""
    for name in ("last", "last.old", "last.tmp", "best", "best.old", "best.tmp"):
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ckpt_dir / FINGERPRINT, fingerprint + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ---------------------------------------------------------------- loop
@dataclass
class Progress:
    """What changes from step to step, and what a checkpoint restores of it."""

    step: int = 0  # optimizer steps taken
    best: float = math.inf  # lowest validation loss so far
    bad_evals: int = 0  # validations in a row without a new best (early stopping)
    # mean loss of each step this process took (a resumed run's earlier ones are in the log only)
    losses: list[float] = field(default_factory=list)


def run_training(
    train_enc: Encoded,
    val_enc: Encoded | None,
    model: Any,
    tok: Any,
    template: PromptTemplate,
    cfg: TrainConfig,
    out: Path,
    compute: torch.dtype,
) -> TrainResult:
    """Train `model` on `train_enc` as `cfg` says, resuming from OUT/checkpoints when they hold
    this same run; writes checkpoints, the training log and the final adapter (or model) to OUT."""
    recipe = FinetuneRecipe(train_enc, val_enc, tok, template, cfg, out, compute)
    recipe.setup(model)
    recipe.train()
    return recipe.finish()


class FinetuneRecipe:
    """One `ragtune train` run, laid out like torchtune's recipes: `setup` (data plan, model,
    optimizer, resume point, log), `train` (the loop: `_train_step` with its `_loss_step`,
    `_validate`, `_save_last`) and `finish` (final validation, figures, the saved adapter)."""

    def __init__(
        self,
        train_enc: Encoded,
        val_enc: Encoded | None,
        tok: Any,
        template: PromptTemplate,
        cfg: TrainConfig,
        out: Path,
        compute: torch.dtype,
    ) -> None:
        self.train_enc, self.val_enc, self.tok, self.template = train_enc, val_enc, tok, template
        self.cfg, self.out, self.compute = cfg, out, compute
        self.ckpt_dir = out / "checkpoints"
        self.acc = _accelerator()
        self.device, self.world, self.rank = self.acc.device, self.acc.num_processes, self.acc.process_index
        self.main = self.acc.is_main_process  # rank 0 writes the files
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.step_size = cfg.batch_size * cfg.grad_accum * self.world  # examples per step, all processes
        self.progress = Progress()
        self._plan_epoch: int = -1
        self._plan: list[list[int]] = []  # the steps of epoch _plan_epoch

    # ------------------------------------------------------------ setup
    def setup(self, model: Any) -> None:
        """Everything the loop needs, `model` moved to this process's device and wrapped for it."""
        self._setup_data()
        self._setup_model(model)
        self._setup_optimizer()
        self._resume_or_start()
        self.log = _Log(self.out / TRAIN_LOG, self.cfg.report_to, self.out) if self.main else None
        self.res = TrainResult(
            out=str(self.out),
            method=self.cfg.method,
            dtype=str(self.compute).replace("torch.", ""),
            processes=self.world,
            trainable_params=sum(p.numel() for p in self.step_core.params),
            total_params=sum(p.numel() for p in self.inner.model.parameters()),
        )

    def _setup_data(self) -> None:
        """Steps per epoch and in all."""
        if len(self.train_enc) < self.step_size and self.world > 1:  # every process needs examples in a step
            raise RagtuneError(
                f"{len(self.train_enc)} training examples cannot fill one step of {self.step_size}; "
                "lower batch_size / grad_accum or the number of processes"
            )
        self.steps_per_epoch = len(self._epoch_plan(0))
        self.total = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def _setup_model(self, model: Any) -> None:
        if not getattr(causal_lm(model), "is_loaded_in_4bit", False):  # 4-bit weights are placed at load
            model = model.to(self.device)
        self.loss_fn = AnswerLoss(model, self.cfg.loss_average)

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        schedule = lr_schedule(cfg.lr_scheduler, math.ceil(cfg.warmup_ratio * self.total), self.total)
        self.step_core = OptimizerStep(
            self.loss_fn.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            schedule=schedule,
            max_grad_norm=cfg.max_grad_norm,
            device=self.device,
            dtype=self.compute,
        )
        self.wrapped = self.step_core.prepare(self.acc, self.loss_fn)  # DDP / FSDP under accelerate launch
        self.inner = self.acc.unwrap_model(self.wrapped)

    def _resume_or_start(self) -> None:
        """Continue from the checkpoint of this same run, or clear old checkpoints and start at step 0."""
        fingerprint = run_fingerprint(self.cfg, self.train_enc, self.inner.model)
        resume_from = _resume_point(self.ckpt_dir, fingerprint, self.cfg)
        self.acc.wait_for_everyone()  # every rank decides before rank 0 clears old checkpoints
        if resume_from is not None:
            self._restore(resume_from)
            return
        torch.manual_seed(self.cfg.seed + self.rank)  # dropout masks
        if self.main:
            _start_over(self.ckpt_dir, fingerprint)
            (self.out / TRAIN_LOG).unlink(missing_ok=True)

    def _restore(self, checkpoint: Path) -> None:
        state = load_state(checkpoint / STATE_FILE)
        named = dict(self.inner.model.named_parameters())
        with torch.no_grad():
            for n, v in state["trainable"].items():
                named[n].copy_(v)
        self.step_core.load_state_dict(state)
        torch.set_rng_state(state["rng"])
        self.progress = Progress(step=state["step"], best=state["best"], bad_evals=state["bad_evals"])
        print(f"resuming from {checkpoint} at step {self.progress.step} (--restart starts over)", file=sys.stderr)
        if self.main:
            _truncate_log(self.out / TRAIN_LOG, self.progress.step)

    # ------------------------------------------------------------ the loop
    def train(self) -> None:
        from tqdm.auto import tqdm

        cfg, progress = self.cfg, self.progress
        self._validate_before_training()
        bar = tqdm(
            total=self.total, initial=progress.step, disable=not self.main, desc="train", unit="step", file=sys.stderr
        )
        self.t0 = time.perf_counter()
        budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        self.res.stop_reason = "max_steps" if cfg.max_steps else "epochs"
        self.wrapped.train()
        while progress.step < self.total:
            mean_loss = self._train_step()
            elapsed = time.perf_counter() - self.t0
            row = self._log_row(mean_loss, elapsed)
            evaluated = bool(self.val_enc is not None and cfg.eval_steps and progress.step % cfg.eval_steps == 0)
            if evaluated:
                self._validate(row)
            if self.log:
                self.log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{self.res.tokens / max(elapsed, 1e-9):.0f}")
            out_of_time = elapsed > budget and progress.step < self.total
            if self.main and ((cfg.save_steps and progress.step % cfg.save_steps == 0) or out_of_time):
                self._save_last()  # a budget stop always leaves a checkpoint, so `resume` continues the same run
            stop_reason = self._stop_reason(evaluated, out_of_time)
            if stop_reason:
                self.res.stop_reason = stop_reason
                break
        bar.close()

    def _train_step(self) -> float:
        """One optimizer step over this step's examples; returns their mean loss over all processes."""
        examples = self._step_examples(self.progress.step)
        lengths = self.train_enc.lengths
        micro = [
            piece
            for m in split_step(examples, lengths, self.cfg.grad_accum, self.rank, self.world)
            for piece in cap_tokens(m, lengths, self.cfg.micro_batch_tokens)
        ]
        # Each example's loss counts 1/len(examples) (or each trained token 1/their number in the
        # step); x world because DDP averages the processes' gradients.
        per_token = self.cfg.loss_average == "token"
        scale = self.world / (self.train_enc.trained_tokens(examples) if per_token else len(examples))
        kept = self.step_core.run(micro, lambda idx: self._loss_step(idx, scale))
        step_loss = torch.zeros((), device=self.device)
        for per_example, n_tokens, n_answer_tokens in kept:
            step_loss += per_example.sum()
            self.res.tokens += n_tokens * self.world
            self.res.answer_tokens += n_answer_tokens * self.world
        self.progress.step += 1
        mean_loss = float(self.acc.reduce(step_loss, reduction="sum")) / len(examples)
        self.progress.losses.append(mean_loss)
        self.res.first_loss = mean_loss if self.res.first_loss is None else self.res.first_loss
        self.res.examples += len(examples)
        return mean_loss

    def _loss_step(self, idx: list[int], scale: float) -> tuple[torch.Tensor, tuple[torch.Tensor, int, int]]:
        """The loss of one micro-batch (x `scale`), and what the step counts of it: its per-example
        losses, real tokens and trained tokens."""
        cfg = self.cfg
        batch = to_device(collate(self.train_enc, idx, self.pad_id, cfg.packing, cfg.pack_length), self.device)
        loss, per_example = self.wrapped(batch, scale)
        return loss, (per_example, int(batch["n_tokens"]), int(batch["target_ids"].numel()))

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        cfg = self.cfg
        return plan_steps(self.train_enc.lengths, self.step_size, cfg.seed, epoch, cfg.group_by_length, self.world > 1)

    def _step_examples(self, step: int) -> list[int]:
        """The examples of `step`, all processes' (an epoch is planned once, when it starts)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._plan_epoch:
            self._plan, self._plan_epoch = self._epoch_plan(epoch), epoch
        return self._plan[within]

    def _log_row(self, mean_loss: float, elapsed: float) -> dict[str, Any]:
        step = self.progress.step
        return {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": round(mean_loss, 5),
            "lr": self.step_core.lr,
            "tokens": self.res.tokens,
            "answer_tokens": self.res.answer_tokens,
            "elapsed_s": round(elapsed, 2),
        }

    def _stop_reason(self, evaluated: bool, out_of_time: bool) -> str | None:
        patience = self.cfg.early_stopping_patience
        if evaluated and patience and self.progress.bad_evals >= patience:
            return "early_stopping"
        return "max_minutes" if out_of_time else None

    # ------------------------------------------------------------ validation and checkpoints
    def _validation_loss(self, desc: str) -> tuple[float, float]:
        assert self.val_enc is not None
        return evaluate_loss(
            self.inner,
            self.val_enc,
            self.cfg.batch_size,
            self.pad_id,
            self.device,
            self.compute,
            self.cfg.micro_batch_tokens,
            desc,
        )

    def _validate_before_training(self) -> None:
        # A step-0 point only for a validation curve: eval compares base and tuned on the test split
        # anyway, and on a CPU this pass over long rows costs minutes.
        if self.val_enc is not None and len(self.val_enc) and self.progress.step == 0 and self.cfg.eval_steps:
            self.res.initial_eval_loss = self._validation_loss("validation (before training)")[0]

    def _validate(self, row: dict[str, Any]) -> None:
        """Validation losses into `row`; a new best is kept as checkpoints/best, anything else counts
        toward early stopping."""
        progress = self.progress
        row["eval_loss"], row["eval_token_loss"] = self._validation_loss("validation")
        if row["eval_loss"] >= progress.best - 1e-6:
            progress.bad_evals += 1
            return
        progress.best, progress.bad_evals = row["eval_loss"], 0
        if self.main and (self.cfg.save_steps or self.cfg.early_stopping_patience):
            save_checkpoint(
                self.ckpt_dir / "best",
                self.inner.model,
                self.tok,
                self.template,
                {"step": progress.step, "eval_loss": progress.best},
            )

    def _save_last(self) -> None:
        """checkpoints/last: the weights and everything else a resumed run must continue from."""
        progress = self.progress
        save_checkpoint(
            self.ckpt_dir / "last",
            self.inner.model,
            self.tok,
            self.template,
            {
                "step": progress.step,
                "best": progress.best,
                "bad_evals": progress.bad_evals,
                **self.step_core.state_dict(),
                "rng": torch.get_rng_state(),
            },
        )

    # ------------------------------------------------------------ finish
    def finish(self) -> TrainResult:
        """Final validation and figures; rank 0 saves the adapter (or model) into OUT."""
        self._final_figures()
        self.acc.wait_for_everyone()
        if self.main:
            save_model(self.out, self.inner.model, self.tok, self.template)
            if self.log:
                self.log.close()
        self.acc.wait_for_everyone()
        if _single_process():
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)  # leave no settings behind for others
        return self.res

    def _final_figures(self) -> None:
        res, progress = self.res, self.progress
        res.seconds = round(time.perf_counter() - self.t0, 2)
        res.steps = progress.step
        res.epochs = round(progress.step / self.steps_per_epoch, 4)
        res.train_loss = sum(progress.losses[-10:]) / len(progress.losses[-10:]) if progress.losses else None
        if self.val_enc is not None and len(self.val_enc):
            res.eval_loss, res.eval_token_loss = self._validation_loss("validation (after training)")
            progress.best = min(progress.best, res.eval_loss)
        res.best_eval_loss = None if progress.best == math.inf else progress.best
        res.tokens_per_s = round(res.tokens / max(res.seconds, 1e-9), 1)
        res.answer_tokens_per_s = round(res.answer_tokens / max(res.seconds, 1e-9), 1)
        res.peak_memory_mb = peak_memory_mb(self.device)


def _single_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def _accelerator() -> Any:
    """Autocast is ours (bf16 only where the hardware has it), so mixed precision stays "no";
    cpu=True lets torchrun start gloo processes. In a single process, settings left behind by
    another library's Accelerator (e.g. an HF Trainer's bf16) are cleared first, not inherited."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if _single_process() and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())


class _Log:
    """training_log.jsonl (flushed per step, survives a kill) and, when asked, a tracker."""

    def __init__(self, path: Path, report_to: str, out: Path) -> None:
        from ragtune.records import JsonlAppender

        # appended, flushed per step and fsynced every second and at close (survives a kill)
        self.f = JsonlAppender(path)
        self.tb = self.wandb = None
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RagtuneError(
                    "report_to tensorboard needs the tensorboard package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError:
                raise RagtuneError("report_to wandb needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project="ragtune", dir=str(out))

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(row)
        scalars = {k: v for k, v in row.items() if k not in ("step",) and isinstance(v, (int, float))}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        if self.wandb:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to the resumed step; a row torn by a kill is repaired like synth's."""
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path, repair=True) if r.get("step", 0) <= step])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def result_dict(res: TrainResult) -> dict[str, Any]:
    return asdict(res)
