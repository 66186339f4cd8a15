"""Calibration data for profiling: built-in sentences, a text file, or a GLUE task folder; batching."""
import os
import random

import torch

from .._checks import check_int
from ..data.glue import Example, get_task, read_glue_tsv

# Varied register and length on purpose: activation norms depend on what the text is like.
BUILTIN_SENTENCES = (
    "The committee postponed its decision until the budget figures were confirmed.",
    "A dog chased the ball across the wet grass.",
    "She said the film was far too long, but the ending made up for it.",
    "Interest rates rose for the third consecutive quarter.",
    "Can you tell me where the nearest train station is?",
    "The enzyme catalyses the hydrolysis of ATP into ADP and phosphate.",
    "He never answered the letter, which surprised everyone who knew him.",
    "Heavy rain is expected across the northern regions tomorrow.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Despite the injury, the striker scored twice in the second half.",
    "Our neighbours painted their fence a bright shade of yellow.",
    "The court ruled that the contract was void from the start.",
    "I could not put the book down; the plot twists kept coming.",
    "Photosynthesis converts light energy into chemical energy.",
    "The museum will be closed on Monday for maintenance.",
    "Nobody expected the small startup to outgrow its competitors so fast.",
    "Please remember to switch off the lights when you leave.",
    "The bridge was designed to withstand winds of up to two hundred kilometres per hour.",
    "What a dull, lifeless performance from an otherwise gifted cast.",
    "The children built a sandcastle before the tide came in.",
    "Researchers found no link between the supplement and improved memory.",
    "The old clock in the hall stopped at a quarter past nine.",
    "Shares fell sharply after the company missed its earnings forecast.",
    "If the meeting runs late, start dinner without me.",
    "The novel follows three generations of a family of fishermen.",
    "Volcanic ash grounded flights across much of Europe.",
    "This is, without exaggeration, the best coffee in town.",
    "The software update fixed the bug but slowed the startup time.",
    "Migrating birds navigate using the Earth's magnetic field.",
    "The orchestra rehearsed the symphony for weeks before the premiere.",
    "He apologised for the delay and promised a full refund.",
    "Glaciers in the region have retreated by several kilometres since 1950.",
)


def load_examples(*, data_dir=None, task=None, text_file=None, split="train"):
    """Calibration examples (text_a, text_b, label): a GLUE task's split, a text file's lines, or built-in.

    Text-file lines and built-in sentences have no label (None).
    """
    if data_dir is not None and text_file is not None:
        raise ValueError("give a GLUE data_dir (with task) or a text_file, not both")
    if task is not None and data_dir is None:
        raise ValueError(f"task {task!r} needs a GLUE data_dir to read it from (without one, the built-in "
                         "sentences are used: leave the task out)")
    if data_dir is not None:
        if task is None:
            raise ValueError("a GLUE data_dir needs a task (e.g. 'sst2')")
        task = get_task(task)
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"GLUE data directory not found: {data_dir}")
        return read_glue_tsv(os.path.join(data_dir, task.folder, f"{split}.tsv"), task)
    if text_file is not None:
        if os.path.isdir(text_file):
            raise IsADirectoryError(f"text file {text_file} is a directory; give a file with one text per line")
        if not os.path.exists(text_file):
            raise FileNotFoundError(f"text file not found: {text_file}")
        with open(text_file, "rb") as handle:
            raw_lines = handle.read().splitlines()
        lines = []
        for number, raw in enumerate(raw_lines, start=1):
            try:
                lines.append(raw.decode("utf-8").strip())
            except UnicodeDecodeError as err:
                raise ValueError(f"{text_file}, line {number}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start})") from None
        examples = [Example(line, None, None) for line in lines if line]
        if not examples:
            raise ValueError(f"{text_file}: no non-empty lines to calibrate on")
        return examples
    return [Example(text, None, None) for text in BUILTIN_SENTENCES]


def sample_examples(examples, n, seed=0):
    """`n` examples drawn without replacement with `seed` (all of them, in order, when n ≥ len)."""
    check_int("the number of samples", n, 1)
    if n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


def make_batches(tokenizer, examples, *, batch_size=16, max_seq_len=128):
    """Tokenised batches (each padded to its longest row) with ``labels`` when every example has one."""
    check_int("batch_size", batch_size, 1)
    check_int("max_seq_len", max_seq_len, 2)
    if not examples:
        raise ValueError("no examples to batch")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-style tokenizers; padding is masked out anyway
    labelled = all(e.label is not None for e in examples)
    regression = labelled and any(isinstance(e.label, float) for e in examples)
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        pairs = [e.text_b for e in chunk] if chunk[0].text_b is not None else None
        batch = dict(tokenizer([e.text_a for e in chunk], pairs, padding=True, truncation=True,
                               max_length=max_seq_len, return_tensors="pt"))
        if labelled:
            batch["labels"] = torch.tensor([e.label for e in chunk],
                                           dtype=torch.float32 if regression else torch.long)
        batches.append(batch)
    return batches
