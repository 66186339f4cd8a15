"""A tiny Llama to run the decoder path end to end on a CPU, and the instruction set it is fine-tuned on.

    python benchmarks/tiny_decoder.py samples act_lora_fast/data/samples   # the shipped text set (deterministic)
    python benchmarks/tiny_decoder.py model runs/tiny-llama --pretrain-steps 300

``samples`` writes ``instructions-train.jsonl`` (320 rows) and ``instructions-eval.jsonl`` (80 rows, prompts not
in the training file): templated prompt/completion pairs (arithmetic, comparison, counting, reversing and
continuing lists, opposites) generated here from word lists written for this project. No external text: the
files are ours, released with the project (CC0-1.0; see act_lora_fast/data/samples/README.md).

``model`` writes a Llama folder: a word-level tokenizer (special tokens, a chat template) built on the
generated texts, and a 4-block Llama (hidden 64) with random weights, or with ``--pretrain-steps N`` full
training steps on generated statements (the completions' sentence forms, no prompts) so that the LoRA
fine-tune starts from a model that knows the words but not the instruction format.
"""
import argparse
import json
import os
import random

NUMBERS = range(0, 21)
WORDS = ["red", "blue", "green", "cat", "dog", "bird", "apple", "pear", "plum", "tree", "river", "stone",
         "cloud", "lamp", "chair", "book"]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("light", "dark"), ("up", "down"),
             ("open", "closed"), ("early", "late"), ("full", "empty"), ("young", "old"), ("wet", "dry"),
             ("near", "far"), ("high", "low"), ("loud", "quiet"), ("hard", "soft"), ("first", "last")]


def _qa(rng):
    """One (question, answer, statement) triple of a random kind."""
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.choice(NUMBERS), rng.choice(NUMBERS)
        if rng.random() < 0.5:
            return f"what is {a} plus {b} ?", f"{a} plus {b} is {a + b} ."
        a, b = max(a, b), min(a, b)
        return f"what is {a} minus {b} ?", f"{a} minus {b} is {a - b} ."
    if kind == 1:
        a, b = rng.sample(list(NUMBERS), 2)
        big, small = max(a, b), min(a, b)
        return f"which is larger , {a} or {b} ?", f"{big} is larger than {small} ."
    if kind == 2:
        items = rng.sample(WORDS, rng.randint(2, 5))
        return f"how many words are in : {' '.join(items)} ?", f"there are {len(items)} words ."
    if kind == 3:
        items = rng.sample(WORDS, rng.randint(2, 5))
        return f"reverse the list : {' '.join(items)}", f"the reversed list is {' '.join(reversed(items))} ."
    if kind == 4:
        start, step = rng.randint(0, 8), rng.randint(1, 3)
        seq = [start + i * step for i in range(6)]
        return (f"continue the sequence : {' '.join(map(str, seq[:3]))}",
                f"the sequence continues {' '.join(map(str, seq[3:]))} .")
    word, opposite = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, opposite = opposite, word
    return f"what is the opposite of {word} ?", f"the opposite of {word} is {opposite} ."


def instruction_rows(n, *, seed, exclude=()):
    """`n` distinct prompt/completion rows (prompts not in `exclude`)."""
    rng, seen, rows = random.Random(seed), set(exclude), []
    while len(rows) < n:
        question, answer = _qa(rng)
        if question not in seen:
            seen.add(question)
            rows.append({"prompt": f"question : {question}\nanswer :", "completion": f" {answer}"})
    return rows


def sample_rows():
    """The shipped set: 320 training rows, 80 evaluation rows whose questions the training rows do not ask."""
    train = instruction_rows(320, seed=0)
    evaluation = instruction_rows(80, seed=1, exclude={row["prompt"][len("question : "):-len("\nanswer :")]
                                                       for row in train})
    return train, evaluation


def write_samples(folder):
    os.makedirs(folder, exist_ok=True)
    train, evaluation = sample_rows()
    for name, rows in (("instructions-train.jsonl", train), ("instructions-eval.jsonl", evaluation)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def statements(n, *, seed):
    """Generated sentences in the answers' forms (for pretraining: the words, not the instruction format)."""
    rng = random.Random(seed)
    return [" ".join(_qa(rng)[1] for _ in range(4)) for _ in range(n)]


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]


def tiny_tokenizer(texts):
    """A word-level fast tokenizer over `texts` (whitespace split), BOS added, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                        special_tokens=[("<s>", core.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_decoder(folder, *, layers=4, hidden=64, pretrain_steps=0, seed=0, progress=False):
    """A tiny Llama folder (model + tokenizer); see the module docstring. Returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    corpus = statements(400, seed=seed + 7)
    train, evaluation = sample_rows()
    numbers = " ".join(map(str, range(0, 64)))  # every number a generated row can hold
    tokenizer = tiny_tokenizer(corpus + [numbers] + [r["prompt"] + r["completion"] for r in train + evaluation])
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        _pretrain(model, tokenizer, corpus, pretrain_steps, seed, progress)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return os.fspath(folder)


def _pretrain(model, tokenizer, corpus, steps, seed, progress):
    import torch

    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(corpus, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        rows = torch.randint(0, len(corpus), (16,), generator=generator)
        loss = model(input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows],
                     labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress and (step + 1) % 50 == 0:
            print(f"pretraining step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    samples = commands.add_parser("samples", help="write the instruction set's two JSONL files")
    samples.add_argument("folder")
    model = commands.add_parser("model", help="write a tiny Llama folder (model + tokenizer)")
    model.add_argument("folder")
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--hidden", type=int, default=64)
    model.add_argument("--pretrain-steps", type=int, default=0)
    model.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the same numbers on any machine's CPU, and no contention on a shared one
    if args.command == "samples":
        print(write_samples(args.folder))
    else:
        print(write_tiny_decoder(args.folder, layers=args.layers, hidden=args.hidden,
                                 pretrain_steps=args.pretrain_steps, seed=args.seed, progress=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
