"""Exports loaded back by their consumers, CoT / citation targets, the dataset card, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_docs import make_kb

from ragtune.build import assemble_examples, build_to_run, inspect_dataset
from ragtune.build.exports import ALL_FORMATS
from ragtune.build.inspect import example_warnings, tokenizer_warnings
from ragtune.build.targets import ANSWER_MARKER, QUOTE_CLOSE, QUOTE_OPEN, final_answer
from ragtune.config import REFUSAL, BuildConfig, IngestConfig, SynthConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest, ingest_to_run
from ragtune.prompts import PromptTemplate
from ragtune.synth import synth_to_run, synthesize

SMALL = IngestConfig(chunk_tokens=60, max_chunk_tokens=80, overlap_tokens=12, min_chunk_tokens=10)
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    run = root / "run"
    ingest_to_run(make_kb(root / "kb", n_docs=12), run, SMALL.model_copy(update={"tokenizer": str(tiny_model_dir)}))
    synth_to_run(run, SynthConfig())
    build_to_run(run, BuildConfig(formats=list(ALL_FORMATS), k_distractors=2), tokenizer=str(tiny_model_dir))
    return run


def test_every_export_loads_with_datasets(run: Path) -> None:
    from datasets import load_dataset

    n = json.loads((run / "dataset" / "build_report.json").read_text())["examples"]
    for fmt in ALL_FORMATS:
        folder = run / "dataset" / "exports" / fmt
        ext = "parquet" if fmt == "parquet" else "json"
        files = {s: str(folder / f"{s}.{'parquet' if ext == 'parquet' else 'jsonl'}") for s in n if n[s]}
        dd = load_dataset(ext, data_files=files, cache_dir=str(run / "hf_cache"))
        assert {s: dd[s].num_rows for s in dd} == {s: v for s, v in n.items() if v}, fmt


def test_export_rows_match_the_dataset(run: Path) -> None:
    from datasets import load_from_disk

    train = load_from_disk(str(run / "dataset"))["train"]
    ex = run / "dataset" / "exports"
    first = lambda fmt: json.loads((ex / fmt / "train.jsonl").read_text().splitlines()[0])  # noqa: E731
    assert first("trl-prompt-completion") == {"prompt": train[0]["prompt"], "completion": train[0]["completion"]}
    msgs = first("openai")["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[2]["content"] == train[0]["completion"] and train[0]["question"] in msgs[1]["content"]
    io = first("axolotl-io")["segments"]
    assert io[0] == {"label": False, "text": train[0]["prompt"]} and io[1]["text"].endswith("</s>")
    info = json.loads((ex / "llamafactory-sharegpt" / "dataset_info.json").read_text())
    assert info["ragtune_train"]["formatting"] == "sharegpt"
    assert json.loads((ex / "llamafactory-alpaca" / "dataset_info.json").read_text())["ragtune_train"]["columns"]
    raft = first("raft")
    assert raft["context"]["sentences"][0] == train[0]["passage_texts"]
    assert raft["oracle_context"] in train[0]["passage_texts"] or not train[0]["oracle_in_context"]


@pytest.mark.slow
def test_trl_prepares_both_trl_formats(run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM

    from ragtune.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = CHAT
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for fmt in ("trl-prompt-completion", "trl-messages"):
        ds = load_dataset(
            "json",
            data_files=str(run / "dataset" / "exports" / fmt / "train.jsonl"),
            split="train",
            cache_dir=str(run / "hf_cache"),
        )
        args = trl.SFTConfig(
            output_dir=str(tmp_path / fmt),
            max_steps=1,
            report_to=[],
            max_length=None,
            dataset_num_proc=None,
            use_cpu=True,
        )
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        row = trainer.train_dataset[0]
        assert len(row["input_ids"]) > 20
        if fmt == "trl-prompt-completion":  # loss on the completion only
            trained = sum(row["completion_mask"]) if "completion_mask" in row else sum(x != -100 for x in row["labels"])
            assert 0 < trained < len(row["input_ids"]) / 4


def test_card_reports_the_figures(run: Path) -> None:
    card = (run / "dataset" / "README.md").read_text()
    report = json.loads((run / "dataset" / "build_report.json").read_text())
    assert f"{report['oracle_share_answerable']:.1%}" in card
    assert f"{report['unanswerable_share']:.1%}" in card
    assert "documents shared between splits | 0 |" in card
    assert "| prompt |" in card and "## Recipe" in card and "path: train.jsonl" in card
    from datasets import load_dataset

    # the card's configs point at the JSONL files; a private cache so no earlier run's rows are reused
    dd = load_dataset(str(run / "dataset"), cache_dir=str(run / "hf_cache"))
    assert dd["train"].num_rows == report["examples"]["train"]


def test_cot_and_citations(tmp_path: Path, tokenizer) -> None:
    chunks = ingest(make_kb(tmp_path / "kb", n_docs=10), SMALL, tokenizer=tokenizer).chunks
    qa = synthesize(chunks, SynthConfig(unanswerable_share=0.1)).items
    res = assemble_examples(qa, chunks, BuildConfig(cot=True, cite=True), tokenizer)
    rows = [e for s in res.splits.values() for e in s]
    assert rows
    for e in rows:
        assert ANSWER_MARKER in e.completion
        if e.oracle_in_context:
            quote = e.completion.split(QUOTE_OPEN, 1)[1].split(QUOTE_CLOSE, 1)[0]
            assert quote in e.passage_texts[e.meta["oracle_index"]]  # verbatim, from a shown passage
            assert e.completion.rstrip().endswith(f"[{e.meta['oracle_index'] + 1}]")
            assert final_answer(e.completion) == e.answers[0]
        else:
            assert final_answer(e.completion) == REFUSAL
    plain = assemble_examples(qa, chunks, BuildConfig(cite=True), tokenizer)
    cited = [e for s in plain.splits.values() for e in s if e.oracle_in_context]
    assert all(e.completion == f"{e.answers[0]} [{e.meta['oracle_index'] + 1}]" for e in cited)


def test_inspect_shows_and_warns(run: Path, tiny_model_dir: Path, tokenizer) -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    report = inspect_dataset(run / "dataset", n=2, tokenizer=str(tiny_model_dir), console=console)
    out = console.export_text()
    assert len(report["examples"]) == 2 and "tokens: prompt" in out
    assert report["warnings"] == {} and "no masking problems found" in out
    assert all(e["trained_tokens"] > 1 for e in report["examples"])
    # the warnings fire on the problems they name
    template = PromptTemplate.for_tokenizer(tokenizer)
    assert any("EOS" in w for w in example_warnings(_NoEos(tokenizer), template, "### Answer:\n", "x"))
    assert any("prefix" in w for w in example_warnings(tokenizer, template, "The answer is ", "the"))
    tok = __import__("copy").deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    assert tokenizer_warnings(tok)
    with pytest.raises(RagtuneError, match="ragtune_prompt.json"):
        inspect_dataset(run, tokenizer=str(tiny_model_dir))


class _NoEos:
    """A tokenizer without an EOS token (so no EOS can be trained)."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.eos_token, self.eos_token_id, self.pad_token_id = None, None, tok.pad_token_id

    def __call__(self, *a, **k):
        return self._tok(*a, **k)
