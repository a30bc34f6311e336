"""The `reader` recipe's pieces and the induction probe, on real tiny models."""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import corpus_texts
from reader import (
    Corpus,
    ReaderConfig,
    Tasks,
    copies,
    masked_loss,
    probe_model,
    reader_config,
    unformed_advice,
)

from ragtune.config import REFUSAL
from ragtune.errors import RagtuneError
from ragtune.prompts import PromptTemplate


class InductionCopier(torch.nn.Module):
    """A hand-made model that copies: it predicts the token that followed the latest earlier
    occurrence of the current token (a perfect induction head), else nothing in particular."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 1)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed

    def forward(self, input_ids, cache=None, use_cache=False):
        full = input_ids if cache is None else torch.cat([cache, input_ids], 1)
        vocab = self.embed.num_embeddings
        logits = torch.zeros(*input_ids.shape, vocab)
        offset = full.size(1) - input_ids.size(1)
        for b in range(full.size(0)):
            for t in range(input_ids.size(1)):
                pos = offset + t
                earlier = (full[b, :pos] == full[b, pos]).nonzero()
                if len(earlier):
                    logits[b, t, full[b, earlier[-1, 0] + 1]] = 20.0
        return SimpleNamespace(logits=logits, cache=full)


def small_reader(**overrides):
    """A reader config small enough to train a few steps in seconds."""
    return ReaderConfig(
        **{
            "scale": "cpu",
            "vocab_size": 400,
            "hidden_size": 64,
            "num_heads": 2,
            "intermediate_size": 64,
            "seq_len": 64,
            "max_span": 16,
            "late_seq_len": 128,
            "batch_size": 4,
            "warmup_steps": 2,
            **overrides,
        }
    )


def small_reader_tasks(cfg, tmp_path):
    """A tokenizer trained on the test corpus and the reader tasks over it."""
    from ragtune.models import train_tokenizer

    tok = train_tokenizer(corpus_texts(), cfg.vocab_size, tmp_path)
    stream = torch.tensor(tok(" ".join(corpus_texts()), add_special_tokens=False)["input_ids"])
    return tok, Tasks(tok, Corpus(corpus_texts()), stream, cfg)


def test_probe_sees_no_copying_in_the_fixture_model(tiny_model_dir, capsys):
    res = probe_model(str(tiny_model_dir), lengths=(8, 32))
    for r in res.values():
        assert 0.8 < r["ratio"] < 1.2, r  # 40 steps of plain LM: no induction
        assert r["greedy_acc"] < 0.2
    assert not copies(res, (32,))
    out = capsys.readouterr().out
    assert "2nd-copy loss" in out and "32" in out


def test_probe_measures_a_model_that_copies(tokenizer):
    res = probe_model(InductionCopier(len(tokenizer)), lengths=(8, 32), tokenizer=tokenizer, show=False)
    for r in res.values():
        assert r["ratio"] < 0.01 and r["first_loss"] > 1.0
        assert r["next_token_acc"] == 1.0 and r["greedy_acc"] == 1.0
    assert copies(res, (32,))


def test_probe_rejects_bad_lengths(tiny_model_dir):
    with pytest.raises(RagtuneError, match="at least 2"):
        probe_model(str(tiny_model_dir), lengths=(1,))


def test_cli_probe(tiny_model_dir, capsys):
    from reader import main

    main(["probe", str(tiny_model_dir), "--lengths", "8"])
    assert "ratio" in capsys.readouterr().out
    with pytest.raises(RagtuneError, match="comma-separated"):
        main(["probe", str(tiny_model_dir), "--lengths", "8,x"])
    main(["probe", str(tiny_model_dir), "--lengths", "8", "--rows", "2"])
    with pytest.raises(RagtuneError, match="--rows"):
        main(["probe", str(tiny_model_dir), "--rows", "0"])


def test_cli_build_settings_are_parsed_as_json_where_they_parse():
    from reader import _overrides

    assert _overrides(["seed=4", 'task_mix={"recall": 1}', "find_spread=mix"]) == {
        "seed": 4,
        "task_mix": {"recall": 1},
        "find_spread": "mix",
    }
    with pytest.raises(RagtuneError, match="key=value"):
        _overrides(["seed"])


def test_reader_defaults_fill_only_unset_fields():
    cfg = reader_config(ReaderConfig(scale="cpu", hidden_size=128))
    assert cfg.vocab_size == 512 and cfg.num_layers == 3 and cfg.hidden_size == 128
    gpu = reader_config(ReaderConfig(scale="gpu"))
    assert gpu.hidden_size > cfg.hidden_size and gpu.batch_size > cfg.batch_size
    with pytest.raises(RagtuneError, match="task_mix"):
        reader_config(ReaderConfig(task_mix={"poetry": 1.0}))
    with pytest.raises(RagtuneError, match="seq_len"):
        reader_config(ReaderConfig(seq_len=100))


@pytest.fixture
def tasks(tokenizer):
    cfg = reader_config(ReaderConfig(scale="cpu", late_seq_len=256))
    stream = torch.arange(5, 2000) % len(tokenizer)
    return Tasks(tokenizer, Corpus(corpus_texts()), stream, cfg)


def test_copy_rows_train_only_on_second_copies(tasks):
    rng = random.Random(1)
    ids, mask = tasks.copy(rng, 32)
    n = (len(ids) - 1) // 2
    assert ids[1 : n + 1] == ids[n + 1 :] and sum(mask) == n - 1
    assert all(ids[i] == ids[i - n] for i, m in enumerate(mask) if m)
    ids, mask = tasks.row("copy", rng, 320, 128)
    assert len(ids) == len(mask) == 320 and sum(mask) > 0


def test_echo_rows_copy_a_window_of_the_corpus_stream(tasks):
    rng = random.Random(2)
    stream = tasks.stream.tolist()
    for _ in range(5):
        ids, mask = tasks.echo(rng, 0)
        n = (len(ids) - 1) // 2
        window = ids[1 : n + 1]
        assert window == ids[n + 1 :] and sum(mask) == n - 1 and mask[: n + 2] == [0] * (n + 2)
        start = stream.index(window[0])
        assert stream[start : start + n] == window  # contiguous text, not random ids


def test_recall_spans_are_copies_of_the_window_from_a_word_start(tasks, tokenizer):
    rng = random.Random(4)
    text_ids = tokenizer(" ".join(corpus_texts()), add_special_tokens=False)["input_ids"]
    tasks = Tasks(tokenizer, tasks.corpus, torch.tensor(text_ids * 3), tasks.cfg)  # real text: words start
    marker = tasks.a_ids
    for _ in range(5):
        ids, mask = tasks.recall(rng, 0)
        cuts = [i for i in range(len(ids)) if ids[i : i + len(marker)] == marker]
        window = ids[1 : cuts[0]]
        assert 3 <= len(cuts) <= 6 and mask[: cuts[0] + len(marker) + 1] == [0] * (cuts[0] + len(marker) + 1)
        for a, b in zip(cuts, [*cuts[1:], len(ids)], strict=True):
            span, trained = ids[a + len(marker) : b], mask[a + len(marker) : b]
            assert trained == [0] + [1] * (len(span) - 1)  # the first id of a span is not predictable
            assert any(window[i : i + len(span)] == span for i in range(len(window)))
            assert tokenizer.convert_ids_to_tokens(span[0]).startswith("\u0120")


def test_recall_weighs_ids_whose_previous_id_has_several_followers(tasks):
    tasks = Tasks(tasks.tok, tasks.corpus, tasks.stream, tasks.cfg.model_copy(update={"recall_ambiguous_weight": 3.0}))
    marker, rng = tasks.a_ids, random.Random(6)
    weights = set()
    for _ in range(5):
        ids, mask = tasks.recall_ids(rng, 0)
        cuts = [i for i in range(len(ids)) if ids[i : i + len(marker)] == marker]
        window = ids[1 : cuts[0]]
        followers = {a: {b for x, b in zip(window, window[1:], strict=False) if x == a} for a in window}
        for i in range(cuts[0], len(ids)):
            if any(c <= i <= c + len(marker) for c in cuts):  # the marker and a span's first id: untrained
                assert mask[i] == 0
                continue
            weights.add(mask[i])
            assert mask[i] == (3.0 if len(followers[ids[i - 1]]) > 1 else 1)
    assert weights == {1, 3.0}  # both kinds occur, so the check above saw each


def test_recall_ids_spans_need_several_ids_back(tasks):
    rng = random.Random(5)
    marker = tasks.a_ids
    ids, mask = tasks.recall_ids(rng, 0)
    cut = next(i for i in range(len(ids)) if ids[i : i + len(marker)] == marker)
    window = ids[1:cut]
    assert 4 <= len(set(window)) <= 24  # a small alphabet: any one id repeats
    span = ids[cut + len(marker) :][:4]
    assert any(window[i : i + 4] == span for i in range(len(window)))
    assert sum(mask) > 0 and not any(mask[: cut + len(marker) + 1])


def test_lookup_answer_is_the_value_after_its_key(tasks):
    ids, mask = tasks.lookup(random.Random(2), 0)
    value = [t for t, m in zip(ids, mask, strict=True) if m]
    start = mask.index(1)
    query = ids[start - len(tasks.eq) - 2 : start]
    body = ids[: start - len(query)]
    hits = [i for i in range(len(body)) if body[i : i + len(query)] == query]
    assert hits and body[hits[0] + len(query) : hits[0] + len(query) + len(value)] == value


def test_rag_rows_look_like_the_prompt_and_answer_from_the_context(tasks, tokenizer):
    rng = random.Random(3)
    for _ in range(5):
        ids, mask = tasks.rag(rng, 0)
        text = tokenizer.decode(ids)
        answer = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True)
        prompt = text.split("### Answer:\n")[0]
        if "### Context:" not in prompt:  # a sentence too short fell back to `continue`
            continue
        context = prompt.split("### Context:")[1].rsplit("### Question:", 1)[0]
        assert "### Question:" in prompt and answer.strip() in context
        assert ids[-1] == tokenizer.eos_token_id


def test_question_first_rag_rows_ask_before_the_context_too(tasks, tokenizer):
    first, last = (
        Tasks(tokenizer, tasks.corpus, tasks.stream, tasks.cfg.model_copy(update={"question_first": q}))
        for q in (True, False)
    )
    rng, seen = random.Random(3), 0
    for _ in range(10):
        ids, mask = first.rag(rng, 0)
        text = tokenizer.decode(ids)
        if "### Context:" not in text:  # a sentence too short fell back to `continue`
            continue
        seen += 1
        before, after = text.split("### Context:")
        question = after.split("### Question:\n")[1].split("\n\n### Answer:")[0]
        assert f"### Question:\n{question}\n\n" in before
    assert seen
    rng = random.Random(3)
    asked_last = [tokenizer.decode(last.rag(rng, 0)[0]).split("### Context:") for _ in range(10)]
    assert all("### Question:" not in parts[0] for parts in asked_last if len(parts) == 2)
    assert sum(len(parts) == 2 for parts in asked_last) == seen  # the same rows, asked the other way
    # the other tasks keep the instruction as it was
    assert first.instruction_ids == last.instruction_ids


def test_same_doc_distractors_come_from_the_oracles_document(tokenizer):
    corpus = Corpus(corpus_texts())
    titles = lambda text: re.findall(r"\[\d\] (.*)\n", text.partition("### Context:")[2].split("### Question:")[0])  # noqa: E731
    for share, want_same in ((1.0, True), (0.0, False)):
        cfg = reader_config(ReaderConfig(scale="cpu", same_doc_distractors=share))
        tasks, rng, same = Tasks(tokenizer, corpus, torch.arange(5, 50), cfg), random.Random(7), []
        for _ in range(40):
            found = titles(tokenizer.decode(tasks.rag(rng, 0)[0]))
            if len(found) == 3:
                same.append(len(set(found)) == 1)
        assert len(same) > 20
        # documents with another short paragraph give both distractors; random ones rarely do
        assert (sum(same) > 0.7 * len(same)) if want_same else (sum(same) < 0.2 * len(same)), same


def test_first_token_weight_scales_only_each_answers_first_token():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 0, 1]], dtype=torch.float32)
    logits = torch.randn(1, 6, 8)
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    # targets are tokens 2, 3 and 5; tokens 2 and 5 open an answer
    loss, _ = masked_loss(logits, ids, mask, first_weight=3.0)
    assert torch.isclose(loss, (3 * ce[1] + ce[2] + 3 * ce[4]) / 7)
    plain, _ = masked_loss(logits, ids, mask)
    assert torch.isclose(plain, (ce[1] + ce[2] + ce[4]) / 3)


def answered_questions(tokenizer, ids, mask):
    """(context, question, answer) of every trained answer of a row, decoded; targets of
    `continue` examples (the fallback when a sentence is too short to blank) are left out."""
    text_of = lambda a, b: tokenizer.decode(ids[a:b], skip_special_tokens=True)  # noqa: E731
    starts = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    out = []
    for s in starts:
        end = next((i for i in range(s, len(mask)) if not mask[i]), len(mask))
        before = text_of(0, s)
        if not before.endswith("### Answer:\n"):
            continue
        context = before.split("### Context:\n")[-1].split("### Question:")[0]
        question = before.rsplit("### Question:\n", 1)[-1].split("\n\n### Answer:")[0]
        out.append((context, question, text_of(s, end).strip()))
    return out


def test_locate_rows_ask_many_questions_answered_from_random_word_passages(tokenizer):
    cfg = reader_config(ReaderConfig(scale="cpu", refusal_share=0.3, late_seq_len=640))
    tasks = Tasks(tokenizer, Corpus(corpus_texts()), torch.arange(5, 50), cfg)
    rng = random.Random(5)
    seen = {"answered": 0, "refused": 0, "contexts": 0}
    for _ in range(20):
        ids, mask = tasks.row("locate", rng, 640, 0)
        assert len(ids) == 640
        qas = answered_questions(tokenizer, ids, mask)
        seen["contexts"] += len({c for c, _, _ in qas})
        for context, question, answer in qas:
            words = question.removeprefix("Fill in the blank: ").rstrip("?.").split()
            marker = "____" if "____" in words else "what"
            i = words.index(marker)
            if answer == REFUSAL:  # the question's sentence is in no passage
                seen["refused"] += 1
                assert " ".join(words[max(0, i - 3) : i]) not in context or i == 0
            else:
                seen["answered"] += 1
                # the answer follows the question's words before the blank, in a passage
                assert " ".join([*words[max(0, i - 3) : i], answer]) in " ".join(context.split())
    assert seen["answered"] > 2 * seen["refused"] > 0
    assert seen["answered"] + seen["refused"] > 1.5 * seen["contexts"]  # follow-up questions


def test_loose_question_share_asks_in_the_synth_loose_form(tokenizer):
    corpus, forms = Corpus(corpus_texts()), {}
    for share in (0.0, 1.0):
        cfg = reader_config(ReaderConfig(scale="cpu", loose_question_share=share, late_seq_len=640))
        tasks, rng = Tasks(tokenizer, corpus, torch.arange(5, 50), cfg), random.Random(4)
        qas = [qa for _ in range(10) for qa in answered_questions(tokenizer, *tasks.row("rag", rng, 640, 0))]
        forms[share] = {"loose" if q.startswith("What ") else "cloze" if "____" in q else "wh" for _, q, _ in qas}
        for context, question, answer in qas:
            assert " ".join(answer.split()) in " ".join(context.split()), (question, answer)
    assert forms == {0.0: {"cloze", "wh"}, 1.0: {"loose"}}


def test_shuffled_loose_questions_keep_their_words_in_another_order(tokenizer):
    sentence = "the quick brown fox jumps over the lazy dog near the old mill by the river bank today."
    passage, moved = ("T", sentence, [sentence]), 0
    for seed in range(20):
        asked = {}
        for shuffled in (False, True):
            cfg = ReaderConfig(loose_question_share=1.0, loose_shuffled=shuffled)
            tasks = Tasks(tokenizer, Corpus(corpus_texts()), torch.arange(5, 50), cfg)
            asked[shuffled] = tasks.blank(random.Random(seed), passage)
        (kept, answer), (bag, same_answer) = asked[False], asked[True]
        assert answer == same_answer and kept.startswith("What ") and bag.startswith("What ")
        assert sorted(kept[5:-1].split()) == sorted(bag[5:-1].split())
        moved += kept != bag
    assert moved >= 15


def test_rag_follow_ups_ask_more_questions_on_the_same_passages(tokenizer):
    corpus = Corpus(corpus_texts())
    counts = {}
    for follow_ups in (0, 3):
        cfg = reader_config(ReaderConfig(scale="cpu", rag_follow_ups=follow_ups, late_seq_len=640))
        tasks, rng, n = Tasks(tokenizer, corpus, torch.arange(5, 50), cfg), random.Random(9), 0
        for _ in range(20):
            ids, mask = tasks.row("rag", rng, 640, 0)
            for context, question, answer in answered_questions(tokenizer, ids, mask):
                assert " ".join(answer.split()) in " ".join(context.split()), (question, answer)
                n += 1
        counts[follow_ups] = n
    assert counts[3] > 1.5 * counts[0] > 0


def test_find_answers_follow_the_ids_before_the_blank_once_in_the_context(tasks):
    rng = random.Random(6)
    checked = 0
    for _ in range(30):
        ids, mask = tasks.find(rng, 8)
        start = len(tasks.instruction_ids) if ids[: len(tasks.instruction_ids)] == tasks.instruction_ids else 1
        q_len = len(tasks.q_ids)
        ctx = ids[start : next(i for i in range(start, len(ids)) if ids[i : i + q_len] == tasks.q_ids)]
        for s in [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]:
            answer = ids[s : mask.index(0, s) - 1] if 0 in mask[s:] else ids[s:-1]  # without the EOS
            q = max(i for i in range(s) if ids[i : i + len(tasks.q_ids)] == tasks.q_ids) + len(tasks.q_ids)
            # some 2-6 ids that open the question occur once in the context, right before the answer
            hits = {k: [i for i in range(len(ctx)) if ctx[i : i + k] == ids[q : q + k]] for k in range(2, 25)}
            found = [k for k, h in hits.items() if len(h) == 1 and ctx[h[0] + k : h[0] + k + len(answer)] == answer]
            assert found, (ids[q : q + 6], answer, ctx)
            checked += 1
    assert checked > 60


@pytest.mark.parametrize("question_first", [False, True])
def test_scatter_answers_follow_the_anchor_in_the_sentence_sharing_the_question_bag(tokenizer, question_first):
    cfg = reader_config(ReaderConfig(scale="cpu", question_first=question_first))
    tasks = Tasks(tokenizer, None, torch.zeros(10, dtype=torch.long), cfg)
    rng, decoys = random.Random(11), 0
    for _ in range(40):
        ids, mask = tasks.scatter(rng, 0)
        s = mask.index(1)
        answer, body = ids[s:-1], ids[: s - len(tasks.a_ids)]
        q = max(i for i in range(len(body)) if body[i : i + len(tasks.q_ids)] == tasks.q_ids)
        question = body[q + len(tasks.q_ids) :]
        start = 1 + (len(body) - q if question_first else 0)  # the question asked first, then the context
        assert not question_first or body[1:start] == body[q:]
        context = body[start:q]
        marker = next(len(m) for m in (tasks.blank_ids, tasks.what_ids) if question[-1 - len(m) : -1] == m)
        before = question[: -1 - marker]  # the bag, then the anchor
        sentences, cur = [], []
        for x in context:
            cur.append(x)
            if x == tasks.stop:
                sentences.append(cur)
                cur = []
        best = max(sentences, key=lambda x: len(set(x) & set(before)))
        # the anchor: the longest tail of `before` found in the best sentence right before the answer
        hits = [
            k
            for k in (2, 1)
            if any(
                best[j : j + k] == before[-k:] and best[j + k : j + k + len(answer)] == answer for j in range(len(best))
            )
        ]
        assert hits, (before, answer, best)
        k = hits[0]
        decoys += sum(x[j : j + k] == before[-k:] for x in sentences if x is not best for j in range(len(x)))
        assert sum(len(set(x) & set(before)) == len(set(best) & set(before)) for x in sentences) == 1
    assert decoys >= 40  # the anchor alone never says where the answer is


def test_rows_never_cut_targets(tasks):
    rng = random.Random(4)
    for task in ("continue", "rag", "text"):
        ids, mask = tasks.row(task, rng, 256, 128)
        assert len(ids) == len(mask) == 256


def test_corpus_too_small_is_a_clear_error():
    with pytest.raises(RagtuneError, match="paragraphs"):
        Corpus(["too short"])


@pytest.mark.slow
def test_mix_steps_whose_rows_lost_every_target_are_not_judged(tmp_path):
    from reader import reader_llama, train_reader

    # 32-token rows cut every recall example (a window of 8-16 ids, then 3-6 spans of 5 ids or
    # more, each after the answer marker), so every recall step's loss is 0 over no targets:
    # before round 12 that read as "recall formed"
    cfg = reader_config(
        small_reader(
            max_steps=6,
            copy_phase_max=0.0,
            find_phase_max=0.0,
            recall_phase_max=0.0,
            late_seq_len=32,
            task_mix={"recall": 1.0},
        )
    )
    tok, tasks = small_reader_tasks(cfg, tmp_path)
    rng = random.Random(0)
    assert not any(any(tasks.row("recall", rng, cfg.late_seq_len, 0)[1]) for _ in range(20))
    stats = train_reader(reader_llama(cfg, tok), tok, tasks, cfg, tmp_path)
    assert stats["steps"] == 6 and "recall" not in stats["mix_task_loss"] and "mix" not in stats["phases"]


@pytest.mark.slow
def test_make_reader_model_saves_a_loadable_model(tmp_path, capsys):
    from reader import make_reader_model

    from ragtune.models import load_model

    # rows long enough for a recall example (a window and its spans) to keep its targets, and
    # recall alone in the mix, so the mix's verdict on recall has steps to judge
    cfg = small_reader(
        max_steps=12,
        copy_phase_max=0.0,
        find_phase_max=1e-9,
        recall_phase_max=1e-9,
        late_seq_len=640,
        task_mix={"recall": 1.0},
    )
    info = make_reader_model(corpus_texts(), tmp_path, cfg)
    assert info["recipe"] == "reader" and info["steps"] == 12 and set(info["probe"]) == {"8", "32", "128"}
    saved = json.loads((tmp_path / "ragtune_tiny_model.json").read_text())
    assert saved["copy_phase_steps"] == 1 and saved["phases"]["find"]["steps"] == 2  # copy, find, recall, the mix
    assert saved["phases"]["recall"]["steps"] == 3 and "formed" not in saved["phases"]["recall"]
    assert saved["mix_task_loss"]  # the last 10 steps drew tasks from the mix
    # both phases were cut at their caps long before any circuit could form: the user is told
    assert not saved["phases"]["copy"]["formed"] and not saved["phases"]["find"]["formed"]
    err = " ".join(capsys.readouterr().err.split())
    assert "copy phase ended before its circuit formed" in err and "find phase ended before" in err
    assert "recall phase ended before" not in err  # its verdict comes at the end of the mix
    assert saved["phases"]["mix"] == {"recall_loss": saved["mix_task_loss"]["recall"], "formed": False}
    assert "copies the first piece of an answer but rarely the rest" in err
    model, tok = load_model(tmp_path, precision="fp32")
    assert tok.pad_token_id != tok.eos_token_id and model.config.num_hidden_layers == 3
    assert model(input_ids=torch.tensor([[tok.bos_token_id, 10, 11]])).logits.shape[-1] == len(tok)
    # prompts longer than the mixed phase's rows get dynamic RoPE scaling
    assert model.config.max_position_embeddings == cfg.late_seq_len
    assert model.config.rope_parameters["rope_type"] == "dynamic"
    # the prompt its rag rows used is saved beside it, so build and serve render the same
    assert PromptTemplate.load(tmp_path) == PromptTemplate(style="plain", question_first=cfg.question_first)
    assert cfg.question_first  # the reader default since round 10


def test_dynamic_rope_changes_only_prompts_longer_than_the_trained_length(tmp_path):
    from reader import reader_llama

    cfg = small_reader()
    tok, _ = small_reader_tasks(cfg, tmp_path)
    plain, scaled = reader_llama(cfg, tok), reader_llama(cfg, tok, trained_length=100)
    assert plain.config.rope_parameters["rope_type"] == "default"
    ids = torch.randint(10, len(tok), (1, 300))
    with torch.no_grad():
        assert torch.equal(plain(ids[:, :99]).logits, scaled(ids[:, :99]).logits)  # same weights, same RoPE
        long_plain, long_scaled = plain(ids).logits, scaled(ids).logits
    assert not torch.allclose(long_plain, long_scaled, atol=1e-4)
    off = reader_llama(cfg.model_copy(update={"rope_dynamic_factor": 0.0}), tok, trained_length=100)
    assert off.config.rope_parameters["rope_type"] == "default"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stall", "phase", "at_step"),
    [
        ({"copy_patience_steps": 3}, "copy", 4),
        ({"copy_phase_max": 0.0, "find_patience_steps": 2}, "find", 4),
        # at its cap after one step: half the patience (0) has passed, the full one (1) not
        ({"copy_phase_max": 0.0, "find_phase_max": 1e-9, "find_patience_steps": 1}, "find", 2),
    ],
)
def test_a_stalled_phase_starts_over_from_new_weights_once_per_allowed_restart(tmp_path, stall, phase, at_step):
    from reader import reader_llama, train_reader

    cfg = reader_config(small_reader(max_steps=8, max_restarts=1, **stall))
    tok, tasks = small_reader_tasks(cfg, tmp_path)
    model = reader_llama(cfg, tok)
    first_weights = model.model.embed_tokens.weight.detach().clone()
    stats = train_reader(model, tok, tasks, cfg, tmp_path)
    assert [(r["phase"], r["steps"], r["seed"]) for r in stats["restarts"]] == [(phase, at_step, 0)]
    assert stats["steps"] == 8  # the second start ran on: no restart left, so no stall ends it
    fresh = reader_llama(cfg.model_copy(update={"seed": 1000}), tok).model.embed_tokens.weight
    moved = (model.model.embed_tokens.weight - fresh).abs().mean() / (first_weights - fresh).abs().mean()
    assert moved < 0.5  # the weights trained on from the new start, not from the first


@pytest.mark.parametrize(("losses", "formed"), [([1.2] * 30 + [0.24] * 20, True), ([0.24] * 30 + [0.95] * 20, False)])
def test_recall_counts_as_formed_by_its_last_losses(losses, formed, capsys):
    from reader import _recall_record

    assert _recall_record(losses)["formed"] is formed
    assert ("rarely the rest" in " ".join(capsys.readouterr().err.split())) is not formed


@pytest.mark.parametrize(
    ("phase", "level", "acc", "formed"),
    [
        ("copy", 160, 0.93, True),
        ("copy", 160, 0.85, False),
        ("copy", 144, 0.95, False),
        ("find", 1, 0.5, True),
        ("find", 0, 0.8, False),
    ],
)
def test_a_phase_counts_as_formed_only_at_its_goal(phase, level, acc, formed):
    from reader import _formed

    cfg = reader_config(ReaderConfig())
    assert _formed(phase, level, acc, 160 if phase == "copy" else 10, cfg) is formed


@pytest.mark.slow
@pytest.mark.parametrize("copy_share", [0.0, 0.3])
def test_the_recall_phase_follows_find_and_keeps_a_share_of_find_and_copy_rows(tmp_path, copy_share):
    from reader import reader_llama, train_reader

    cfg = reader_config(
        small_reader(
            max_steps=24,
            copy_phase_max=0.0,
            find_phase_max=1e-9,
            recall_phase_max=1.0,
            recall_phase_find=0.5,
            recall_phase_copy=copy_share,
        )
    )
    tok, tasks = small_reader_tasks(cfg, tmp_path)
    drawn: list[tuple[str, int, int]] = []
    row = tasks.row
    tasks.row = lambda task, rng, n, span: drawn.append((task, n, span)) or row(task, rng, n, span)
    stats = train_reader(reader_llama(cfg, tok), tok, tasks, cfg, tmp_path)
    assert list(stats["phases"]) == ["copy", "find"] and stats["steps"] == 24  # recall until the end
    late_batch = cfg.batch_size * cfg.seq_len // cfg.late_seq_len
    recall_phase = drawn[cfg.batch_size + late_batch :]  # after one copy step and one find step
    assert len(recall_phase) == 22 * late_batch
    assert {t for t, _, _ in recall_phase} == ({"recall", "find", "copy"} if copy_share else {"recall", "find"})
    # copy rows there are as long as the phase's and copy spans up to the longest
    assert {(n, span) for t, n, span in recall_phase if t == "copy"} <= {(cfg.late_seq_len, cfg.max_span)}


@pytest.mark.parametrize(
    ("spread", "recall_phase", "mix"),
    [
        ("off", {6}, {6}),
        ("mix", {6}, set(range(7))),
        ("after_find", set(range(7)), set(range(7))),
        (True, set(range(7)), set(range(7))),  # round 8's boolean
    ],
)
def test_find_rows_after_the_find_phase_take_the_level_reached_or_any_below(spread, recall_phase, mix):
    from reader import _find_level

    cfg = reader_config(ReaderConfig(find_spread=spread))
    for in_mix, levels in ((False, recall_phase), (True, mix)):
        rng = random.Random(0)
        before = rng.getstate()
        assert {_find_level({"find": 6}, cfg, rng, in_mix=in_mix) for _ in range(300)} == levels
        # at the level reached it draws nothing: the run sees the random stream it saw before round 8
        assert (rng.getstate() == before) is (levels == {6})


def test_unformed_find_with_a_large_vocabulary_points_at_the_one_where_it_formed():
    small = reader_config(ReaderConfig(scale="cpu"))
    large = reader_config(ReaderConfig(scale="cpu", vocab_size=1024))
    assert "--vocab-size 512" in unformed_advice("find", large)
    assert "vocab-size" not in unformed_advice("find", small)
    assert "vocab-size" not in unformed_advice("copy", large)
    assert "will not copy reliably" in unformed_advice("copy", small)
