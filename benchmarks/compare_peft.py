"""Ratio table, end to end: our `apply_act_lora` against PEFT's LoRA on the same blocks, interleaved.

Same model, selection, rank, batch and AdamW on both sides; each configuration is trained on a fresh copy of
the model, round after round, and the medians over rounds are compared.

    python benchmarks/compare_peft.py                                # MiniLM, batch 16 x 128, r = 8, CPU
    python benchmarks/compare_peft.py --depth --rounds 5 --json out.json
    python benchmarks/compare_peft.py --model /path/to/hf-model --device cuda --batch-size 32 --seq-len 256
    python benchmarks/compare_peft.py --model bert-large-random --device cuda --batch-size 32 --seq-len 256
"""
import argparse
import sys

import torch

from act_lora_fast._io import write_json
from act_lora_fast.measure.harness import BenchSettings, resolve_device, synthetic_batch
from act_lora_fast.measure.vs_peft import compare_with_peft, format_peft_table
from act_lora_fast.model.hf import load_classifier


def bert_large_random(seed=0):
    """A BERT-large-sized classifier with random weights: the larger model of the GPU run (no hub here)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        num_labels=2)
    return BertForSequenceClassification(config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm",
                        help="model folder, 'minilm' (default) or 'bert-large-random' (random weights)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of blocks the method selects")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="wall-clock or CPU seconds of this process (CPU only; stable on a shared machine "
                             "with --threads 1)")
    parser.add_argument("--depth", action="store_true",
                        help="also measure the bottom block alone and the top block alone")
    parser.add_argument("--json", default=None, help="write the full result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model == "bert-large-random":
        model, tokenizer = bert_large_random(), None
    else:
        model, tokenizer = load_classifier(args.model, require_tokenizer=False)
    device = resolve_device(args.device)
    batch = synthetic_batch(model, args.batch_size, args.seq_len, device=device)
    settings = BenchSettings(r=args.r, alpha=2 * args.r, target_modules="all-linear", steps=args.steps,
                             warmup_steps=1, clock=args.clock)
    num_blocks = model.config.num_hidden_layers
    extra = [[0], [num_blocks - 1]] if args.depth else []
    result = compare_with_peft(model, batch, settings, fraction=args.fraction, tokenizer=tokenizer,
                               rounds=args.rounds, extra_selections=extra, device=device)
    print(f"{args.model}: batch {args.batch_size} x {args.seq_len}, r = {args.r}, all linear modules, "
          f"{result['device']}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(format_peft_table(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
