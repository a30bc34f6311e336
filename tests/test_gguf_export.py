"""`ragtune export --gguf`: a tuned tiny Llama written as GGUF reads back through transformers'
GGUF loader with the same weights, the same greedy answers and the same tokenizer."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from train_helpers import rag_rows

from ragtune.config import TrainConfig
from ragtune.prompts import PromptTemplate, prompt_ids

pytestmark = pytest.mark.slow

N_PROMPTS = 20
NEW_TOKENS = 12


def load_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def greedy(model, prompts: list[list[int]], pad_id: int) -> list[list[int]]:
    """12 tokens per prompt, past EOS, so every position is compared."""
    return [
        model.generate(
            torch.tensor([p]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad_id,
        )[0, len(p) :].tolist()
        for p in prompts
    ]


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tokenizer, tmp_path_factory):
    """A LoRA adapter on the tiny Llama, merged in f32 (`load_model` merges): the model every
    export is compared with."""
    from datasets import Dataset, DatasetDict

    from ragtune.models import load_model
    from ragtune.train import train

    rows = rag_rows(tokenizer, 24, seed=1)
    ds = DatasetDict({"train": Dataset.from_list(rows[:16]), "validation": Dataset.from_list(rows[16:])})
    adapter = tmp_path_factory.mktemp("gguf") / "adapter"
    train(ds, tiny_model_dir, TrainConfig(max_steps=8, batch_size=4, lr=1e-2, lora_dropout=0.0), adapter)
    model, tok = load_model(tiny_model_dir, adapter, precision="fp32", device="cpu")
    template = PromptTemplate.find(adapter, tiny_model_dir) or PromptTemplate.for_tokenizer(tok)
    prompts = [prompt_ids(tok, r["prompt"], template) for r in rag_rows(tok, N_PROMPTS, seed=3)]
    return {"adapter": adapter, "model": model, "tok": tok, "prompts": prompts, "template": template}


def test_f16_export_generates_the_merged_models_greedy_tokens(tuned, tmp_path):
    from ragtune.gguf_export import write_gguf_from_model

    path = write_gguf_from_model(tuned["model"], tuned["tok"], tmp_path / "tuned-f16.gguf", "f16")
    back = load_gguf_model(path)
    assert back.config.tie_word_embeddings and back.config.num_hidden_layers == tuned["model"].config.num_hidden_layers
    assert_same_weights(tuned["model"], back, 0.001)  # f16 rounding: 2**-11 of each tensor's scale at most
    pad = tuned["tok"].pad_token_id
    assert greedy(back, tuned["prompts"], pad) == greedy(tuned["model"], tuned["prompts"], pad)


def test_q8_0_export_keeps_logits_within_tolerance_and_greedy_answers(tuned, tmp_path):
    from ragtune.gguf_export import write_gguf_from_model

    path = write_gguf_from_model(tuned["model"], tuned["tok"], tmp_path / "tuned-q8_0.gguf", "q8_0")
    back = load_gguf_model(path)
    pad = tuned["tok"].pad_token_id
    want = greedy(tuned["model"], tuned["prompts"], pad)
    got = greedy(back, tuned["prompts"], pad)
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= N_PROMPTS - 1
    with torch.no_grad():  # per-token logits along the merged model's own greedy path
        for p, w in zip(tuned["prompts"], want, strict=True):
            x = torch.tensor([p + w])
            ref, q8 = tuned["model"](x).logits, back(x).logits
            assert (q8 - ref).abs().max() <= Q8_TOLERANCE
            assert (q8.log_softmax(-1) - ref.log_softmax(-1)).abs().max() <= Q8_TOLERANCE


# q8_0 stores each block of 32 weights as 8-bit steps of one f16 scale. On the tuned tiny Llama
# every logit and log-probability stays within 0.1 of the f32 merged model's (measured: 0.033).
Q8_TOLERANCE = 0.1


def test_f16_export_keeps_greedy_answers_that_differ_from_prompt_to_prompt(tuned, tmp_path):
    """The tuned tiny Llama answers every prompt alike (it has learnt the answer prior, not reading), so
    greedy agreement is also checked on a Llama whose larger random weights answer each prompt differently."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragtune.gguf_export import write_gguf_from_model

    tok = tuned["tok"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.2,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
        )
    ).eval()
    want = greedy(model, tuned["prompts"], tok.pad_token_id)
    assert len({tuple(w) for w in want}) == N_PROMPTS  # every answer different
    back = load_gguf_model(write_gguf_from_model(model, tok, tmp_path / "varied.gguf", "f16"))
    assert greedy(back, tuned["prompts"], tok.pad_token_id) == want


# ---------------------------------------------------------------- from folders, through the CLI
def ragtune_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m ragtune` on this checkout's sources, whatever copy is installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "ragtune", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_exports_the_adapter_as_gguf_and_a_modelfile(tuned, tmp_path):
    out = tmp_path / "ollama" / "tuned.gguf"
    p = ragtune_cli("export", "--adapter", str(tuned["adapter"]), "--gguf", str(out), "--ollama")
    assert p.returncode == 0, p.stderr
    from ragtune.modelstore import read_ragtune_metadata

    assert read_ragtune_metadata(out) == (tuned["template"], None)  # for ragtune's own GGUF import
    modelfile = (out.parent / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./tuned.gguf\n") and tuned["template"].system in modelfile
    back = load_gguf_model(out)
    pad = tuned["tok"].pad_token_id
    assert greedy(back, tuned["prompts"][:5], pad) == greedy(tuned["model"], tuned["prompts"][:5], pad)


def test_the_gguf_import_gives_eval_the_adapters_weights_template_and_rule(
    tuned, tiny_model_dir, tmp_path, monkeypatch
):
    """`eval --base-model tuned.gguf` scores what `eval --adapter` scores: the import gives back the
    merged weights eval runs (bf16 here), the training prompt and the abstention rule."""
    import shutil

    from ragtune.abstain import RefusalRule
    from ragtune.gguf_export import write_gguf
    from ragtune.models import load_model
    from ragtune.modelstore import local_folder

    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path / "home"))
    adapter = shutil.copytree(tuned["adapter"], tmp_path / "adapter")
    rule = RefusalRule(-1.25, {"chosen_on": "validation"})
    rule.save(adapter)
    merged, tok = load_model(tiny_model_dir, adapter)
    assert merged.dtype == torch.bfloat16  # eval's dtype on this CPU
    for gguf_type, tolerance in (("bf16", 0.0), ("f16", 2**-25)):
        path = write_gguf(adapter, tmp_path / f"tuned-{gguf_type}.gguf", gguf_type)
        folder = local_folder(path)
        assert PromptTemplate.find(folder) == tuned["template"] and RefusalRule.find(folder) == rule
        back, _ = load_model(path)
        assert back.dtype == merged.dtype
        # bf16 holds eval's weights exactly; f16 too down to 2**-17, below which it rounds them
        # to steps of 2**-24.
        for (name, a), (_, b) in zip(merged.state_dict().items(), back.state_dict().items(), strict=True):
            assert (a.float() - b.float()).abs().max() <= tolerance, (gguf_type, name)
        pad = tok.pad_token_id
        assert greedy(back, tuned["prompts"], pad) == greedy(merged, tuned["prompts"], pad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gguf", "x.gguf"], "--adapter"),
        (["--adapter", "a", "--ollama", "--out", "o"], "--gguf"),
        (["--adapter", "/nonexistent", "--gguf", "x.gguf"], "adapter_config.json"),
        (["--adapter", "/nonexistent", "--gguf", "x.gguf", "--gguf-type", "q4_0"], "f16, bf16, q8_0"),
    ],
)
def test_bad_export_options_are_one_line_naming_the_fix(args, message):
    p = ragtune_cli("export", *args)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("[transformers]")]
    assert p.returncode == 2 and len(lines) == 1 and message in lines[0], p.stderr


def test_other_architectures_are_refused_naming_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    from ragtune.errors import RagtuneError
    from ragtune.gguf_export import write_gguf

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(RagtuneError, match=r"supports llama, qwen2 models .*not 'gpt2'"):
        write_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")


# ---------------------------------------------------------------- tokenizer round trip
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    """A SmolLM2-style tokenizer: byte-level BPE without a prefix space, ChatML specials and template."""
    from conftest import corpus_texts
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus_texts(),
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.add_tokens(["<think>"])  # an added, non-special token: llama.cpp's USER_DEFINED
    tok.chat_template = CHATML
    return tok


def random_texts(tokenizer, n: int = 1000, seed: int = 0) -> list[str]:
    """Corpus words mixed with digits, accents, CJK, emoji, odd whitespace and the special tokens."""
    from conftest import corpus_texts

    rng = random.Random(seed)
    words = " ".join(corpus_texts()).split()
    odd = [
        "\n",
        "\n\n",
        "  ",
        "\t",
        " \n ",
        "123",
        "45678",
        "3.14",
        "é",
        "Straße",
        "日本語",
        "🙂",
        "—",
        "'s",
        "can't",
        "x=1;",
        "  indented",
        "(a, b)",
        "\u00a0",
    ] + list(tokenizer.all_special_tokens)
    texts = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.75 else rng.choice(odd) for _ in range(rng.randint(1, 25))]
        texts.append("".join(p + rng.choice([" ", " ", "", "\n", "  "]) for p in parts).strip(rng.choice([" ", ""])))
    return texts


def gguf_of(tokenizer, path: Path) -> Path:
    """A GGUF of a random tiny Llama with this tokenizer: the tokenizer is what is tested."""
    from conftest import TEST_MODEL

    from ragtune.gguf_export import write_gguf_from_model
    from ragtune.models import tiny_llama

    return write_gguf_from_model(tiny_llama(TEST_MODEL, tokenizer), tokenizer, path, "f16")


def assert_same_tokenizer(before, after, texts: list[str]) -> None:
    specials = [*before.all_special_tokens, *before.added_tokens_encoder]
    for token in specials:
        assert after.convert_tokens_to_ids(token) == before.convert_tokens_to_ids(token), token
        assert (
            after(token, add_special_tokens=False)["input_ids"] == before(token, add_special_tokens=False)["input_ids"]
        ), token
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(after, key) == getattr(before, key), key
    differ = [t for t in texts if after(t)["input_ids"] != before(t)["input_ids"]]
    assert not differ, f"{len(differ)} of {len(texts)} texts tokenise differently, e.g. {differ[0]!r}"
    assert [after.decode(after(t)["input_ids"], skip_special_tokens=False) for t in texts[:50]] == [
        before.decode(before(t)["input_ids"], skip_special_tokens=False) for t in texts[:50]
    ]


def test_chat_tokenizer_round_trips_through_transformers_gguf_loader(chat_tokenizer, tmp_path):
    """What llama.cpp and Ollama read: no help from ragtune on the way back."""
    from transformers import AutoTokenizer

    path = gguf_of(chat_tokenizer, tmp_path / "chat.gguf")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert_same_tokenizer(chat_tokenizer, back, random_texts(chat_tokenizer))
    assert back.chat_template == CHATML
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert back.apply_chat_template(messages, add_generation_prompt=True) == chat_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    )


def test_prefix_space_tokenizer_round_trips_with_the_recorded_flag(tokenizer, tmp_path):
    """ragtune's tiny tokenizer adds a prefix space, which GGUF readers drop: the file records it,
    `load_gguf_tokenizer` restores it; without it, text free of special tokens (after which the
    tiny tokenizer adds a space again) needs only a leading space."""
    from transformers import AutoTokenizer

    from ragtune.modelstore import load_gguf_tokenizer

    path = gguf_of(tokenizer, tmp_path / "tiny.gguf")
    texts = random_texts(tokenizer)
    assert_same_tokenizer(tokenizer, load_gguf_tokenizer(path), texts)
    plain = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    free = [t for t in texts if not any(s in t for s in tokenizer.all_special_tokens)]
    assert len(free) > 500
    assert all(plain(t if t.startswith(" ") else " " + t)["input_ids"] == tokenizer(t)["input_ids"] for t in free)


# ---------------------------------------------------------------- Ollama Modelfile
def modelfile_fields(text: str) -> dict[str, list[str]]:
    """FROM / TEMPLATE / SYSTEM / PARAMETER values of a Modelfile, triple-quoted values unwrapped."""
    import json
    import re

    fields: dict[str, list[str]] = {}
    for key, quoted, plain in re.findall(r'^(\w+) (?:"""(.*?)"""|([^\n]*))$', text, flags=re.M | re.S):
        value = quoted if quoted or not plain else plain
        if key == "PARAMETER" and value.startswith("stop "):
            key, value = "stop", json.loads(value[len("stop ") :])
        fields.setdefault(key, []).append(value)
    return fields


def render_ollama(template: str, system: str, prompt: str) -> str:
    """Ollama's rendering of the TEMPLATE we write when generating: the text up to `.Response`
    (Ollama cuts the rest), with `.System`, `.Prompt` and escaped `{{` filled in."""
    import re

    values = {'{{ "{{" }}': "{{", "{{ .System }}": system, "{{ .Prompt }}": prompt}
    head = template.split("{{ .Response }}")[0]
    pieces = re.split(r"(\{\{.*?\}\})", head)  # actions at odd indices; values are not re-parsed
    assert all(p in values for p in pieces[1::2]), "an action this renderer does not know"
    return "".join(values[p] if i % 2 else p for i, p in enumerate(pieces))


@pytest.mark.parametrize("style", ["chat", "plain"])
def test_modelfile_template_renders_the_training_prompt(style, chat_tokenizer, tokenizer, tmp_path):
    """Rendered as Ollama renders it, the TEMPLATE gives the training prompt's text, and through the
    GGUF's own tokenizer (as llama.cpp reads it, no prefix space) the training prompt's ids."""
    from transformers import AutoTokenizer

    from ragtune.gguf_export import modelfile_text, ollama_prompt
    from ragtune.prompts import Passage, end_of_answer

    tok = chat_tokenizer if style == "chat" else tokenizer
    assert (getattr(tok, "chat_template", None) is not None) == (style == "chat")
    path = gguf_of(tok, tmp_path / "m.gguf")
    reader = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    lead = " " if style == "plain" else ""  # the space the tiny tokenizer adds and llama.cpp does not
    for question_first in (False, True):
        template = PromptTemplate.for_tokenizer(tok, question_first=question_first)
        fields = modelfile_fields(modelfile_text("m.gguf", tok, template))
        assert fields["FROM"] == ["./m.gguf"] and fields["SYSTEM"] == [template.system]
        assert end_of_answer(tok, template).strip() in fields["stop"] and tok.eos_token in fields["stop"]
        for i, question in enumerate(["Who wrote it?", "What does {{ .Prompt }} mean?", "x"]):
            passages = [
                Passage(title=f"doc {i}", text="It was written by {{ Ada }}.\n\nSecond line."),
                Passage(title="other", text="Nothing here."),
            ]
            want = template.render(tok, question, passages)
            got = render_ollama(
                fields["TEMPLATE"][0],
                fields["SYSTEM"][0],
                ollama_prompt(tok, template, question, template.context_block(passages)),
            )
            assert got == lead + want
            assert reader(got)["input_ids"] == prompt_ids(tok, want, template)
    assert "PARAMETER temperature 0" in modelfile_text("m.gguf", tok, template)


# ---------------------------------------------------------------- other shapes and types
@pytest.mark.parametrize("arch, gguf_type", [("llama", "bf16"), ("qwen2", "f16"), ("qwen2", "q8_0")])
def test_grouped_query_llama_and_qwen2_read_back_with_the_same_logits(arch, gguf_type, chat_tokenizer, tmp_path):
    """Fewer KV heads than query heads (the K permutation uses the KV count), Qwen2's q/k/v biases,
    an untied output matrix, and bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ragtune.gguf_export import write_gguf_from_model

    shape = dict(
        vocab_size=len(chat_tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=arch == "llama",
    )
    torch.manual_seed(0)
    cls, config = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    model = cls(config(**shape)).eval()
    if arch == "qwen2":  # random biases, so a dropped or misnamed bias shows
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    path = write_gguf_from_model(model, chat_tokenizer, tmp_path / f"{arch}.gguf", gguf_type)
    back = load_gguf_model(path)
    assert type(back) is cls and back.config.tie_word_embeddings == shape["tie_word_embeddings"]
    x = torch.randint(0, len(chat_tokenizer), (2, 24))
    with torch.no_grad():
        ref, got = model(x).logits, back(x).logits
    tolerance = {"f16": 0.01, "bf16": 0.05, "q8_0": Q8_TOLERANCE}[gguf_type]
    assert (got - ref).abs().max() <= tolerance * ref.abs().max()
    assert_same_weights(model, back, tolerance)


def assert_same_weights(model, back, tolerance: float) -> None:
    """Every tensor back in place: a Q/K row order or a bias gone wrong shows here even where a
    nearly uniform attention of a small model hides it from the logits."""
    want, got = model.state_dict(), back.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        scale = tensor.abs().max().clamp_min(1e-6)
        assert (got[name].float() - tensor.float()).abs().max() <= tolerance * scale, name
