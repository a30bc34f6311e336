"""The training loop: a plain PyTorch loop driven through `accelerate.Accelerator`.

At this model size the HF Trainer's per-step machinery costs more than the model; a plain
loop also lets every invariant be stated in a few lines (see loss.py and data.py). Run under
`accelerate launch` it becomes DDP / FSDP without changes: each process takes its share of
every step's examples, and the loss is scaled so the averaged gradient equals one process's.
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

TRAIN_INFO = "ragtune_train.json"
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
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
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
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
                      bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise RagtuneError(f"LoRA target modules {targets!r} do not fit this model ({e}); "
                           "use 'all-linear' or names of its linear layers") from None
    return model, tok, compute


# ---------------------------------------------------------------- schedule
def lr_lambda(cfg: TrainConfig, total_steps: int) -> Any:
    warmup = math.ceil(cfg.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(
    loss_fn: AnswerLoss, enc: Encoded, batch_size: int, pad_id: int, device: torch.device, dtype: torch.dtype,
    max_tokens: int | None = None, desc: str | None = None,
) -> tuple[float, float]:
    """(mean of per-example losses, mean over answer tokens) on a tokenised split; with `desc`,
    a progress bar (a validation pass on long rows takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    was_training = loss_fn.training
    loss_fn.eval()
    order = sorted(range(len(enc)), key=lambda j: -enc.lengths[j])
    batches = [p for s in range(0, len(order), batch_size)
               for p in cap_tokens(order[s:s + batch_size], enc.lengths, max_tokens)]
    ex_sum, tok_sum, n_tok = 0.0, 0.0, 0
    for idx in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False, file=sys.stderr):
        batch = to_device(collate(enc, idx, pad_id, False), device)
        with _autocast(device, dtype):
            _, per_example = loss_fn(batch)
        counts = torch.bincount(batch["target_example"], minlength=len(per_example))
        ex_sum += float(per_example.sum())
        tok_sum += float((per_example * counts).sum())
        n_tok += int(counts.sum())
    loss_fn.train(was_training)
    return ex_sum / max(1, len(enc)), tok_sum / max(1, n_tok)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


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
        raise RagtuneError(f"{path} is not a plain trainer state ({first[:160]}); refusing to load it: "
                           "delete that checkpoint folder or train with --restart") from None


_NOT_TRAJECTORY = {"resume", "max_minutes", "report_to", "eval_steps", "save_steps", "early_stopping_patience",
                   "eval_limit"}


def run_fingerprint(cfg: TrainConfig, train_enc: Encoded, model: Any) -> str:
    """What a checkpoint must match to be resumed: the settings that shape the trajectory, the
    training token ids, and the model's parameter names, shapes and sums (another base model differs)."""
    import hashlib

    h = hashlib.sha256(json.dumps({k: v for k, v in cfg.model_dump().items() if k not in _NOT_TRAJECTORY},
                                  sort_keys=True, default=str).encode())
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
        print(f"warning: {found} was saved with other settings, data or base model; starting over",
              file=sys.stderr)
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
def run_training(
    train_enc: Encoded, val_enc: Encoded | None, model: Any, tok: Any, template: PromptTemplate,
    cfg: TrainConfig, out: Path, compute: torch.dtype,
) -> TrainResult:
    from tqdm.auto import tqdm

    acc = _accelerator()
    device, world, rank, main = acc.device, acc.num_processes, acc.process_index, acc.is_main_process
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    step_size = cfg.batch_size * cfg.grad_accum * world
    if len(train_enc) < step_size and world > 1:
        raise RagtuneError(f"{len(train_enc)} training examples cannot fill one step of {step_size}; "
                           "lower batch_size / grad_accum or the number of processes")
    steps_per_epoch = len(plan_steps(train_enc.lengths, step_size, cfg.seed, 0, cfg.group_by_length, world > 1))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if not getattr(causal_lm(model), "is_loaded_in_4bit", False):  # 4-bit weights are placed at load
        model = model.to(device)
    loss_fn = AnswerLoss(model)
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    wrapped, opt = acc.prepare(loss_fn, opt)
    inner = acc.unwrap_model(wrapped)

    ckpt_dir = out / "checkpoints"
    start, best, bad_evals = 0, math.inf, 0
    fingerprint = run_fingerprint(cfg, train_enc, inner.model)
    resume_from = _resume_point(ckpt_dir, fingerprint, cfg)
    acc.wait_for_everyone()  # every rank decides before rank 0 clears old checkpoints
    if resume_from is None and main:
        _start_over(ckpt_dir, fingerprint)
    if resume_from is not None:
        state = load_state(resume_from / STATE_FILE)
        named = dict(inner.model.named_parameters())
        with torch.no_grad():
            for n, v in state["trainable"].items():
                named[n].copy_(v)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, best, bad_evals = state["step"], state["best"], state["bad_evals"]
        print(f"resuming from {resume_from} at step {start} (--restart starts over)", file=sys.stderr)
        if main:
            _truncate_log(out / TRAIN_LOG, start)
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout masks
        if main:
            (out / TRAIN_LOG).unlink(missing_ok=True)
    log = _Log(out / TRAIN_LOG, cfg.report_to, out) if main else None

    res = TrainResult(out=str(out), method=cfg.method, dtype=str(compute).replace("torch.", ""), processes=world,
                      trainable_params=sum(p.numel() for p in params),
                      total_params=sum(p.numel() for p in inner.model.parameters()))
    # A step-0 point only for a validation curve: eval compares base and tuned on the test split
    # anyway, and on a CPU this pass over long rows costs minutes.
    if val_enc is not None and len(val_enc) and start == 0 and cfg.eval_steps:
        res.initial_eval_loss = evaluate_loss(inner, val_enc, cfg.batch_size, pad_id, device, compute,
                                              cfg.micro_batch_tokens, "validation (before training)")[0]
    bar = tqdm(total=total, initial=start, disable=not main, desc="train", unit="step", file=sys.stderr)
    t0 = time.perf_counter()
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    plan: list[list[int]] = []
    plan_epoch = -1
    losses: list[float] = []
    res.stop_reason = "max_steps" if cfg.max_steps else "epochs"
    step = start
    wrapped.train()
    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != plan_epoch:
            plan = plan_steps(train_enc.lengths, step_size, cfg.seed, epoch, cfg.group_by_length, world > 1)
            plan_epoch = epoch
        examples = plan[within]
        micro = [piece for m in split_step(examples, train_enc.lengths, cfg.grad_accum, rank, world)
                 for piece in cap_tokens(m, train_enc.lengths, cfg.micro_batch_tokens)]
        scale = world / len(examples)
        step_loss = torch.zeros((), device=device)
        for k, idx in enumerate(micro):
            batch = to_device(collate(train_enc, idx, pad_id, cfg.packing, cfg.pack_length), device)
            sync = k == len(micro) - 1
            with (acc.no_sync(wrapped) if not sync and world > 1 else _null()), _autocast(device, compute):
                loss, per_example = wrapped(batch, scale)
                acc.backward(loss)
            step_loss += per_example.sum()
            res.tokens += int(batch["n_tokens"]) * world
            res.answer_tokens += int(batch["target_ids"].numel()) * world
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        mean_loss = float(acc.reduce(step_loss, reduction="sum")) / len(examples)
        losses.append(mean_loss)
        res.first_loss = mean_loss if res.first_loss is None else res.first_loss
        res.examples += len(examples)
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(mean_loss, 5),
                               "lr": sched.get_last_lr()[0], "tokens": res.tokens, "answer_tokens": res.answer_tokens,
                               "elapsed_s": round(elapsed, 2)}
        evaluated = val_enc is not None and cfg.eval_steps and step % cfg.eval_steps == 0
        if evaluated:
            row["eval_loss"], row["eval_token_loss"] = evaluate_loss(
                inner, val_enc, cfg.batch_size, pad_id, device, compute, cfg.micro_batch_tokens, "validation")
            if row["eval_loss"] < best - 1e-6:
                best, bad_evals = row["eval_loss"], 0
                if main and (cfg.save_steps or cfg.early_stopping_patience):
                    save_checkpoint(ckpt_dir / "best", inner.model, tok, template, {"step": step, "eval_loss": best})
            else:
                bad_evals += 1
        if log:
            log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{res.tokens / max(elapsed, 1e-9):.0f}")
        out_of_time = elapsed > budget and step < total
        if main and ((cfg.save_steps and step % cfg.save_steps == 0) or out_of_time):
            # a budget stop always leaves a checkpoint, so `resume` continues the same run
            save_checkpoint(ckpt_dir / "last", inner.model, tok, template, {
                "step": step, "best": best, "bad_evals": bad_evals, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": torch.get_rng_state()})
        if evaluated and cfg.early_stopping_patience and bad_evals >= cfg.early_stopping_patience:
            res.stop_reason = "early_stopping"
            break
        if out_of_time:
            res.stop_reason = "max_minutes"
            break
    bar.close()
    res.seconds = round(time.perf_counter() - t0, 2)
    res.steps = step
    res.epochs = round(step / steps_per_epoch, 4)
    res.train_loss = sum(losses[-10:]) / len(losses[-10:]) if losses else None
    if val_enc is not None and len(val_enc):
        res.eval_loss, res.eval_token_loss = evaluate_loss(inner, val_enc, cfg.batch_size, pad_id, device, compute,
                                                           cfg.micro_batch_tokens, "validation (after training)")
        best = min(best, res.eval_loss)
    res.best_eval_loss = None if best == math.inf else best
    res.tokens_per_s = round(res.tokens / max(res.seconds, 1e-9), 1)
    res.answer_tokens_per_s = round(res.answer_tokens / max(res.seconds, 1e-9), 1)
    res.peak_memory_mb = peak_memory_mb(device)
    acc.wait_for_everyone()
    if main:
        save_model(out, inner.model, tok, template)
        if log:
            log.close()
    acc.wait_for_everyone()
    if _single_process():
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)  # leave no settings behind for others
    return res


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


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


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
                raise RagtuneError("report_to tensorboard needs the tensorboard package: "
                                   "pip install tensorboard") from None
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
