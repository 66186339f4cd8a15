"""Causal-LM text data: reading, tokenisation with loss masks, and the token loss training and evaluation share.

Files (UTF-8; every bad row is refused with its file and line):

- ``.jsonl``: one JSON object per line (blank lines are skipped), each in one of three shapes:
  ``{"text": str}`` (loss on every token), ``{"prompt": str, "completion": str}`` (loss on the completion's
  tokens only; the two are joined as written, so put the separator you want at the end of the prompt) or
  ``{"messages": [{"role": ..., "content": ...}, ...]}`` (the tokenizer's chat template; loss on the assistant
  turns). Other keys (an id, a source) are ignored.
- ``.txt``: one document per block of lines separated by blank lines (loss on every token).

Tokenised (`TextDataset`): documents (``text``) get the tokenizer's end-of-sequence token and are cut into
consecutive windows of ``max_seq_len`` tokens; prompt/completion and chat rows are one example each, cut at
``max_seq_len`` (an example left with no loss token is dropped and counted). Labels are the input ids with
-100 wherever no loss is taken; `collate` pads on the right (labels with -100).

The loss is the mean over all loss tokens of a batch (or of several, across ranks and accumulation steps):
`token_loss_sum` gives the sum and the count, so a caller can divide by the global count; perplexity is
``exp(loss)``.
"""
import dataclasses
import json
import math
import os
import random
from typing import Optional

import torch

TEXT_TASK = "text"
SUFFIXES = (".jsonl", ".txt")
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


class TextFormatError(ValueError):
    """A malformed text file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class TextRecord:
    """One row: ``kind`` is "text", "completion" or "messages"; ``where`` is "file, line N"."""
    kind: str
    where: str
    text: Optional[str] = None
    prompt: Optional[str] = None
    completion: Optional[str] = None
    messages: Optional[tuple] = None


@dataclasses.dataclass
class TextData:
    """The records of a text task: ``train`` and named evaluation splits; ``source`` says where from."""
    train: list
    eval: dict
    source: str
    task: str = TEXT_TASK


# ---------------------------------------------------------------------------------------------- reading
def _decoded_lines(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise TextFormatError(f"{path}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x})") from None
    return text.replace("\r\n", "\n").split("\n")


def _string(row, key, where, *, empty_ok=False):
    value = row[key]
    if not isinstance(value, str):
        raise TextFormatError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise TextFormatError(f"{where}: {key!r} is empty")
    return value


def _messages(row, where):
    turns = row["messages"]
    if not isinstance(turns, list) or not turns:
        raise TextFormatError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    checked = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or \
                not isinstance(turn.get("content"), str):
            raise TextFormatError(f"{where}: messages[{index}] must be an object with string 'role' and "
                                  f"'content', got {turn!r}"[:300])
        if turn["role"] not in ROLES:
            raise TextFormatError(f"{where}: messages[{index}] has role {turn['role']!r}; expected one of "
                                  f"{', '.join(ROLES)}")
        checked.append({"role": turn["role"], "content": turn["content"]})
    if not any(turn["role"] == "assistant" and turn["content"].strip() for turn in checked):
        raise TextFormatError(f"{where}: 'messages' has no non-empty assistant turn (nothing to learn from)")
    return tuple(checked)


def _record(row, where):
    if not isinstance(row, dict):
        raise TextFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    shapes = [name for name, keys in (("text", ("text",)), ("completion", ("prompt", "completion")),
                                      ("messages", ("messages",))) if any(k in row for k in keys)]
    if len(shapes) != 1:
        found = "none of them" if not shapes else "keys of several"
        raise TextFormatError(f"{where}: a row needs 'text', 'prompt' + 'completion' or 'messages' ({found}; "
                              f"keys {sorted(row)})"[:300])
    kind = shapes[0]
    if kind == "text":
        return TextRecord("text", where, text=_string(row, "text", where))
    if kind == "messages":
        return TextRecord("messages", where, messages=_messages(row, where))
    missing = [k for k in ("prompt", "completion") if k not in row]
    if missing:
        raise TextFormatError(f"{where}: a prompt/completion row lacks {missing[0]!r}")
    return TextRecord("completion", where, prompt=_string(row, "prompt", where, empty_ok=True),
                      completion=_string(row, "completion", where))


def read_text_file(path):
    """The `TextRecord`s of a ``.jsonl`` or ``.txt`` file (see the module docstring), checked row by row."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"text file {path} is a folder; give a .jsonl or .txt file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise TextFormatError(f"{path}: unknown text format {suffix or '(no suffix)'!r}; use .jsonl ('text', "
                              "'prompt'/'completion' or 'messages' per line) or .txt (blank-line separated documents)")
    lines = _decoded_lines(path)
    records = []
    if suffix == ".txt":
        block, start = [], None
        for number, line in enumerate(lines + [""], start=1):
            if line.strip():
                block.append(line)
                start = start or number
            elif block:
                records.append(TextRecord("text", f"{path}, line {start}", text="\n".join(block)))
                block, start = [], None
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TextFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            records.append(_record(row, where))
    if not records:
        raise TextFormatError(f"{path}: no rows")
    return records


def load_text(train_file, eval_file=None, *, eval_fraction=0.1, seed=0, max_train_samples=None,
              max_eval_samples=None):
    """`TextData` from a training file and an evaluation file, or a seeded held-out share of the training file.

    ``max_train_samples`` keeps a seeded random subset of the training rows, ``max_eval_samples`` the first N
    evaluation rows.
    """
    train = read_text_file(train_file)
    if eval_file is not None:
        evaluation = read_text_file(eval_file)
        source = f"text:{os.fspath(train_file)}+{os.fspath(eval_file)}"
    else:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if len(train) < 2:
            raise ValueError(f"{train_file}: {len(train)} row; holding out evaluation rows needs at least 2 "
                             "(or pass an eval file)")
        n_eval = min(max(1, round(len(train) * eval_fraction)), len(train) - 1)
        held = set(random.Random(seed).sample(range(len(train)), n_eval))
        evaluation = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
        source = f"text:{os.fspath(train_file)} ({n_eval} rows held out, seed {seed})"
    if max_train_samples is not None and max_train_samples < len(train):
        picked = sorted(random.Random(seed).sample(range(len(train)), max_train_samples))
        train = [train[i] for i in picked]
    if max_eval_samples is not None:
        evaluation = evaluation[:max_eval_samples]
    return TextData(train=train, eval={"eval": evaluation}, source=source)


# ---------------------------------------------------------------------------------------------- tokenisation
def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer, text, special=True):
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _render(tokenizer, messages, where, **options):
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, **options)
    except Exception as err:  # jinja errors of a model's own template ("roles must alternate", ...)
        raise TextFormatError(f"{where}: the tokenizer's chat template refused this conversation: {err}") from None


def _chat_example(tokenizer, messages, where):
    """Token ids of the conversation and labels on the assistant turns: each turn's span is where the ids of
    the conversation through that turn part from the ids up to its generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise TextFormatError(f"{where}: a 'messages' row needs a tokenizer with a chat template; this model's "
                              "tokenizer has none (use 'prompt'/'completion' rows, or set tokenizer.chat_template)")
    ids = _ids(tokenizer, _render(tokenizer, messages, where), special=False)
    labels = [IGNORE_INDEX] * len(ids)
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _ids(tokenizer, _render(tokenizer, messages[:index], where, add_generation_prompt=True), False)
        through = _ids(tokenizer, _render(tokenizer, messages[:index + 1], where), False)
        start, end = _common_prefix(before, ids), _common_prefix(through, ids)
        labels[start:end] = ids[start:end]
    return ids, labels


def tokenize_record(record, tokenizer, max_seq_len):
    """The examples (``{"input_ids", "labels"}``) one record gives: a document's windows, or one example."""
    eos = tokenizer.eos_token_id
    if record.kind == "text":
        ids = _ids(tokenizer, record.text)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        windows = [ids[i:i + max_seq_len] for i in range(0, len(ids), max_seq_len)]
        return [{"input_ids": w, "labels": list(w)} for w in windows if len(w) >= 2]
    if record.kind == "completion":
        ids = _ids(tokenizer, record.prompt + record.completion)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        start = _common_prefix(_ids(tokenizer, record.prompt), ids)
        labels = [IGNORE_INDEX] * start + ids[start:]
    else:
        ids, labels = _chat_example(tokenizer, record.messages, record.where)
    return [{"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len]}]


def has_loss_token(example):
    """Whether a next-token loss is taken anywhere: a label at position >= 1."""
    return any(label != IGNORE_INDEX for label in example["labels"][1:])


class TextDataset(torch.utils.data.Dataset):
    """Tokenised causal-LM examples (unpadded); `collate` pads each batch on the right.

    ``dropped`` counts records that kept no loss token within ``max_seq_len`` (``dropped_where`` names the
    first few).
    """

    def __init__(self, records, tokenizer, max_seq_len):
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 8:
            raise ValueError(f"max_seq_len must be an int >= 8, got {max_seq_len!r}")
        if not records:
            raise ValueError("no text records to tokenize")
        self.features, self.dropped_where = [], []
        for record in records:
            kept = [e for e in tokenize_record(record, tokenizer, max_seq_len) if has_loss_token(e)]
            if not kept:
                self.dropped_where.append(record.where)
            self.features.extend(kept)
        self.dropped = len(self.dropped_where)
        if not self.features:
            raise ValueError(f"no example keeps a loss token within max_seq_len={max_seq_len} (first: "
                             f"{self.dropped_where[0]}); raise max_seq_len")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index]

    def collate(self, batch):
        width = max(len(f["input_ids"]) for f in batch)
        pad = [width - len(f["input_ids"]) for f in batch]
        return {"input_ids": torch.tensor([f["input_ids"] + [self.pad_id] * n for f, n in zip(batch, pad)]),
                "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * n for f, n in zip(batch, pad)]),
                "labels": torch.tensor([f["labels"] + [IGNORE_INDEX] * n for f, n in zip(batch, pad)])}


# ---------------------------------------------------------------------------------------------- the loss
def loss_token_count(labels):
    """How many next-token predictions a batch's labels take a loss on (labels shifted by one)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def token_loss_sum(logits, labels):
    """Σ over loss tokens of the next-token cross-entropy (float32 or wider), and their count."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits (batch, seq, vocab) and labels (batch, seq) disagree: {tuple(logits.shape)} "
                         f"vs {tuple(labels.shape)}")
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    if shifted.dtype in (torch.float16, torch.bfloat16):
        shifted = shifted.float()
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    loss = torch.nn.functional.cross_entropy(shifted, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def perplexity(mean_loss):
    """exp(mean token loss); inf where that overflows."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf
