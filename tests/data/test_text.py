"""Causal-LM text data: the three JSONL shapes and .txt read and checked row by row, held-out splits, loss masks
(completion only, assistant turns only), windows, padding, and the token loss against a float64 reference."""
import json

import pytest
import torch

from act_lora_fast.data.text import (IGNORE_INDEX, TextDataset, TextFormatError, TextRecord, load_text,
                                     loss_token_count, perplexity, read_text_file, token_loss_sum)
from tests.models import EVAL_TEXT, TRAIN_TEXT, tiny_decoder_script


@pytest.fixture(scope="module")
def tokenizer():
    script = tiny_decoder_script()
    train, evaluation = script.sample_rows()
    return script.tiny_tokenizer([r["prompt"] + r["completion"] for r in train + evaluation]
                                 + ["hello there friend how are you today fine thanks"])


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_jsonl_shapes_and_txt_blocks(tmp_path):
    rows = [{"text": "a b c"}, {"prompt": "q :", "completion": " a", "id": 7},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    records = read_text_file(path)
    assert [r.kind for r in records] == ["text", "completion", "messages"]
    assert records[2].where == f"{path}, line 4"  # the blank line is skipped, the numbering is the file's
    assert records[1].prompt == "q :" and records[1].completion == " a"
    txt = _write(tmp_path, "d.txt", "first doc\nline two\n\n\n second doc \n\nthird")
    docs = read_text_file(txt)
    assert [d.text for d in docs] == ["first doc\nline two", " second doc ", "third"]
    assert [d.where for d in docs] == [f"{txt}, line 1", f"{txt}, line 5", f"{txt}, line 7"]


@pytest.mark.parametrize("content, match", [
    ('{"text": "ok"}\n{"text": "a"\n', r"line 2: not valid JSON"),
    ('["text"]\n', r"line 1: expected a JSON object, got list"),
    ('{"body": "x"}\n', r"line 1: a row needs 'text', 'prompt' \+ 'completion' or 'messages' \(none"),
    ('{"text": "x", "prompt": "y", "completion": "z"}\n', r"line 1: .*keys of several"),
    ('{"prompt": "y"}\n', r"line 1: a prompt/completion row lacks 'completion'"),
    ('{"prompt": "y", "completion": "  "}\n', r"line 1: 'completion' is empty"),
    ('{"text": 3}\n', r"line 1: 'text' must be a string, got int"),
    ('{"messages": "hi"}\n', r"line 1: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "bot", "content": "x"}]}\n', r"line 1: messages\[0\] has role 'bot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}\n', r"line 1: 'messages' has no non-empty assistant turn"),
    ('{"messages": [{"role": "user"}]}\n', r"line 1: messages\[0\] must be an object with string 'role' and 'content'"),
    (b'{"text": "ok"}\n{"text": "\xff"}\n', r"line 2: not UTF-8 text"),
    ("\n\n", r"no rows"),
])
def test_bad_rows_are_refused_with_file_and_line(tmp_path, content, match):
    path = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(TextFormatError, match=match) as caught:
        read_text_file(path)
    assert str(caught.value).startswith(path)


def test_bad_paths(tmp_path):
    with pytest.raises(TextFormatError, match=r"unknown text format '\.csv'"):
        read_text_file(_write(tmp_path, "d.csv", "a,b"))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_text_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="text file not found"):
        read_text_file(str(tmp_path / "missing.jsonl"))


def test_held_out_split_is_seeded_and_disjoint():
    a = load_text(TRAIN_TEXT, eval_fraction=0.25, seed=3)
    b = load_text(TRAIN_TEXT, eval_fraction=0.25, seed=3)
    c = load_text(TRAIN_TEXT, eval_fraction=0.25, seed=4)
    assert (len(a.train), len(a.eval["eval"])) == (240, 80)
    assert a.eval == b.eval and a.eval != c.eval
    assert not {r.where for r in a.train} & {r.where for r in a.eval["eval"]}
    given = load_text(TRAIN_TEXT, EVAL_TEXT, max_train_samples=10, max_eval_samples=5)
    assert (len(given.train), len(given.eval["eval"])) == (10, 5)
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        load_text(TRAIN_TEXT, eval_fraction=1.0)


def test_the_shipped_set_is_what_its_generator_writes(tmp_path):
    """Provenance: act_lora_fast/data/samples is `python benchmarks/tiny_decoder.py samples`'s output, byte for byte."""
    tiny_decoder_script().write_samples(tmp_path)
    for path in (TRAIN_TEXT, EVAL_TEXT):
        assert (tmp_path / path.rsplit("/", 1)[-1]).read_bytes() == open(path, "rb").read()
    train, evaluation = read_text_file(TRAIN_TEXT), read_text_file(EVAL_TEXT)
    assert (len(train), len(evaluation)) == (320, 80)
    assert not {r.prompt for r in train} & {r.prompt for r in evaluation}


def _decoded(tokenizer, ids):
    return tokenizer.decode(ids)


def test_completion_loss_is_on_the_completion_and_eos_only(tokenizer):
    record = TextRecord("completion", "f, line 1", prompt="question : what is 2 plus 3 ?\nanswer :",
                        completion=" 2 plus 3 is 5 .")
    (example,) = TextDataset([record], tokenizer, 64).features
    kept = [i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert _decoded(tokenizer, kept) == "2 plus 3 is 5 . </s>"
    prompt_tokens = len(tokenizer(record.prompt)["input_ids"])  # BOS + 10 words
    assert prompt_tokens == 11 and example["labels"][:prompt_tokens] == [IGNORE_INDEX] * prompt_tokens


def test_chat_loss_is_on_the_assistant_turns(tokenizer):
    messages = ({"role": "system", "content": "fine"}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "how are you"}, {"role": "user", "content": "fine thanks"},
                {"role": "assistant", "content": "today friend"})
    (example,) = TextDataset([TextRecord("messages", "f, line 1", messages=messages)], tokenizer, 64).features
    learned = [i if label != IGNORE_INDEX else None for i, label in zip(example["input_ids"], example["labels"])]
    spans, current = [], []
    for token in learned + [None]:
        if token is None and current:
            spans.append(_decoded(tokenizer, current))
            current = []
        elif token is not None:
            current.append(token)
    assert spans == ["how are you </s>", "today friend </s>"]


def test_chat_rows_need_a_template(tokenizer):
    plain = tiny_decoder_script().tiny_tokenizer(["a b"])
    plain.chat_template = None
    record = TextRecord("messages", "f.jsonl, line 9", messages=({"role": "assistant", "content": "a b"},))
    with pytest.raises(TextFormatError, match=r"f\.jsonl, line 9: a 'messages' row needs a tokenizer with a chat"):
        TextDataset([record], plain, 16)


def test_documents_are_cut_into_windows_and_empty_examples_dropped(tokenizer):
    text = " ".join(["apple pear plum"] * 10)  # 30 words + BOS + EOS = 32 tokens
    doc = TextRecord("text", "f, line 1", text=text)
    data = TextDataset([doc], tokenizer, 12)
    assert [len(f["input_ids"]) for f in data.features] == [12, 12, 8]
    assert all(f["labels"] == f["input_ids"] for f in data.features)
    long_prompt = TextRecord("completion", "f, line 2", prompt=text, completion=" red")
    data = TextDataset([doc, long_prompt], tokenizer, 12)
    assert data.dropped == 1 and data.dropped_where == ["f, line 2"]
    with pytest.raises(ValueError, match=r"no example keeps a loss token .* \(first: f, line 2\)"):
        TextDataset([long_prompt], tokenizer, 12)


def test_collate_pads_right_with_ignored_labels(tokenizer):
    records = read_text_file(TRAIN_TEXT)[:3]
    data = TextDataset(records, tokenizer, 64)
    batch = data.collate([data[0], data[1], data[2]])
    lengths = [len(data[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("shape", [(2, 7, 11), (3, 1, 5), (1, 13, 97)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_token_loss_sum_matches_a_float64_reference(shape, dtype, atol):
    generator = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(shape, generator=generator).to(dtype)
    labels = torch.randint(0, shape[2], shape[:2], generator=generator)
    labels[0, : shape[1] // 2] = IGNORE_INDEX
    total, count = token_loss_sum(logits, labels)
    targets = labels[:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].double(), -1)
    keep = targets != IGNORE_INDEX
    expected = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].sum()
    assert count == loss_token_count(labels) == int(keep.sum())
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.double(), expected, atol=atol * max(count, 1), rtol=1e-4)


def test_token_loss_sum_shape_error_and_perplexity():
    with pytest.raises(ValueError, match=r"disagree: \(2, 3, 4\) vs \(2, 4\)"):
        token_loss_sum(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == float("inf")
