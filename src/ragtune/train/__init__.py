"""`ragtune train` and `ragtune export`: fine-tune a base model on the dataset's prompt /
completion rows (LoRA, DoRA, rsLoRA, QLoRA on GPU, or full fine-tuning) and merge adapters.

`train` is the library entry point; `train_to_run` reads and writes the run folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtune.abstain import ABSTAIN_FILE, RefusalRule, calibrate
from ragtune.config import TrainConfig
from ragtune.errors import RagtuneError
from ragtune.models import TRAIN_INFO
from ragtune.prompts import PromptTemplate
from ragtune.runfolder import RunFolder
from ragtune.train.data import Encoded, encode_rows
from ragtune.train.engine import (
    TRAIN_LOG,
    TrainResult,
    load_for_training,
    no_lora_input_cast,
    result_dict,
    run_training,
    write_text_atomic,
)
from ragtune.train.export import export_merged

__all__ = ["TrainResult", "train", "train_to_run", "export_merged", "encode_rows", "TRAIN_INFO", "TRAIN_LOG"]


def _main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch, or the only process: it writes the files."""
    return int(os.environ.get("RANK", "0")) == 0


def train(
    dataset: Any,
    base_model: str | Path,
    cfg: TrainConfig,
    out: str | Path,
    template: PromptTemplate | None = None,
) -> TrainResult:
    """Fine-tune `base_model` on `dataset` (a DatasetDict with `train`, optional `validation`,
    rows with `prompt` and `completion`); write the adapter, tokenizer, template and logs to `out`."""
    from ragtune.models import pick_device

    if "train" not in dataset:
        raise RagtuneError("the dataset has no 'train' split; build it with `ragtune build`")
    missing = {"prompt", "completion"} - set(dataset["train"].column_names)
    if missing:
        raise RagtuneError(f"the dataset rows lack {sorted(missing)}; build it with `ragtune build`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok, compute = load_for_training(str(base_model), cfg, pick_device())
    template = template or PromptTemplate.for_tokenizer(tok)
    max_length = cfg.max_length or min(int(getattr(tok, "model_max_length", 2048) or 2048), 4096)
    train_enc = encode_rows(dataset["train"], tok, template, max_length)
    if not len(train_enc):
        raise RagtuneError(f"no training example fits max_length {max_length}; raise train.max_length")
    val_enc: Encoded | None = None
    val = None
    if "validation" in dataset and len(dataset["validation"]):
        val = dataset["validation"]
        if cfg.eval_limit and len(val) > cfg.eval_limit:
            val = val.select(range(cfg.eval_limit))
        val_enc = encode_rows(val, tok, template, max_length)
    with no_lora_input_cast(model, compute):  # restored after: calibration generates outside autocast
        res = run_training(train_enc, val_enc, model, tok, template, cfg, out, compute)
    res.dropped = {"too_long": train_enc.dropped_too_long, "no_target": train_enc.dropped_no_target}
    info = {
        "base_model": str(base_model),
        "method": cfg.method,
        "config": cfg.model_dump(),
        "template_style": template.style,
        "result": result_dict(res),
    }
    if _main_process():
        rule = calibrate_abstention(model, tok, template, val, cfg, out)
        info["abstention"] = asdict(rule) if rule else None
        write_text_atomic(out / TRAIN_INFO, json.dumps(info, indent=2))
    return res


def calibrate_abstention(
    model: Any, tok: Any, template: PromptTemplate, val: Any, cfg: TrainConfig, out: Path
) -> RefusalRule | None:
    """Choose and save the abstention rule on the validation rows (see `ragtune.abstain`)."""
    (out / ABSTAIN_FILE).unlink(missing_ok=True)  # a rule belongs to the weights it was chosen for
    if not cfg.calibrate_abstention or val is None:
        return None
    rule = calibrate(
        model, tok, template, val, batch_size=cfg.batch_size, max_answerable_refused=cfg.abstain_max_answerable_refused
    )
    if rule is not None:
        rule.save(out)
        c = rule.calibration
        print(
            f"abstention: refuse {rule.describe()}; on {c['examples']} validation examples F1 "
            f"{c['f1_without_rule']} -> {c['f1_with_rule']}, refusing {c['refusal_targets_refused']}% of "
            f"refusal targets and {c['answerable_refused']}% of answerable ones"
        )
    return rule


def train_to_run(run_dir: str | Path, cfg: TrainConfig, base_model: str | None = None) -> TrainResult:
    """Train on RUN/dataset from RUN/base_model (or `base_model`); write RUN/adapter."""
    from datasets import load_from_disk

    run = RunFolder(Path(run_dir))
    if not run.dataset.is_dir():
        raise RagtuneError(f"{run.dataset} does not exist; run `ragtune build --run {run.root}` first")
    base = base_model or str(run.base_model)
    if base_model is None and not run.base_model.is_dir():
        raise RagtuneError(f"{run.base_model} does not exist; pass --base-model or run `ragtune tiny-model`")
    run.ensure()
    dataset = load_from_disk(str(run.dataset))
    template = PromptTemplate.find(run.dataset)
    res = train(dataset, base, cfg, run.adapter, template=template)  # saves this template beside the adapter
    if _main_process():
        run.record_stage(
            "train",
            config=cfg,
            inputs=[run.dataset / RunFolder.DATASET_DICT],
            base_model=base,
            steps=res.steps,
            seconds=res.seconds,
            train_loss=res.train_loss,
            eval_loss=res.eval_loss,
            tokens_per_s=res.tokens_per_s,
            peak_memory_mb=res.peak_memory_mb,
            stop_reason=res.stop_reason,
        )
        # a run resumed at its last step trains no step: no loss to show
        loss = "no step left" if res.first_loss is None else f"{res.first_loss:.4f} -> {res.train_loss:.4f}"
        print(
            f"trained {res.steps} steps in {res.seconds:.0f} s ({res.stop_reason}): loss {loss}, "
            f"val {res.eval_loss}, {res.tokens_per_s:.0f} tokens/s, peak memory {res.peak_memory_mb / 1024:.1f} GB; "
            f"adapter in {run.adapter}"
        )
    return res
