import copy

import pytest

from ragtune.config import REFUSAL
from ragtune.prompts import IGNORE_INDEX, Passage, PromptTemplate, encode_example, prompt_ids

PASSAGES = [Passage("Lists", "A list is a mutable sequence."), Passage("Tuples", "A tuple is immutable.")]


def test_plain_template_has_every_part(tokenizer):
    tpl = PromptTemplate.for_tokenizer(tokenizer)
    assert tpl.style == "plain"
    text = tpl.render(tokenizer, "What is a list?", PASSAGES)
    for part in ("### Instruction:", REFUSAL, "[1] Lists", "[2] Tuples", "What is a list?"):
        assert part in text
    assert text.endswith("### Answer:\n")


def test_labels_mask_exactly_the_prompt_and_train_eos(tokenizer):
    tpl = PromptTemplate.for_tokenizer(tokenizer)
    prompt = tpl.render(tokenizer, "What is a list?", PASSAGES)
    enc = encode_example(tokenizer, prompt, "a mutable sequence", tpl)
    n_prompt = len(prompt_ids(tokenizer, prompt, tpl))
    assert enc["input_ids"][:n_prompt] == prompt_ids(tokenizer, prompt, tpl)
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    trained = enc["labels"][n_prompt:]
    assert trained == enc["input_ids"][n_prompt:]
    assert IGNORE_INDEX not in trained
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained, skip_special_tokens=True).strip() == "a mutable sequence"


def test_pad_is_not_eos(tokenizer):
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_template_round_trips_through_its_file(tmp_path):
    tpl = PromptTemplate(style="plain", refusal="No answer.")
    tpl.save(tmp_path)
    assert PromptTemplate.load(tmp_path) == tpl


CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.mark.parametrize("chat", [False, True])
def test_question_first_asks_before_and_after_the_context(tokenizer, chat):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT if chat else None
    plain, first = (PromptTemplate.for_tokenizer(tok, question_first=q) for q in (False, True))
    q = "What is a list?"
    one, two = plain.render(tok, q, PASSAGES), first.render(tok, q, PASSAGES)
    assert one.count(q) == 1 and two.count(q) == 2
    assert two.index(q) < two.index("[1] Lists") < two.rindex(q)
    # the same text with the first question taken out: nothing else moves
    heading = "### Question:\n" if not chat else "Question: "
    assert two.replace(f"{heading}{q}\n\n", "", 1) == one
    assert first.render_context(tok, q, first.context_block(PASSAGES)) == two


def test_find_takes_the_first_folder_with_a_template(tmp_path):
    adapter, base, empty = (tmp_path / n for n in ("adapter", "base", "empty"))
    empty.mkdir()
    PromptTemplate(refusal="adapter's").save(adapter)
    PromptTemplate(refusal="base's").save(base)
    assert PromptTemplate.find(None, empty, adapter, base).refusal == "adapter's"
    assert PromptTemplate.find(empty, base, adapter).refusal == "base's"
    assert PromptTemplate.find(empty, None) is None
