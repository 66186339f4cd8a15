"""`act-lora profile`, `act-lora select`, `act-lora stability`: the Act-LoRA method on the command line."""
import os

from ..method.profiling import METRICS
from ..method.selection import STRATEGIES
from ._args import csv_list, model_location, positive_int, target_modules


def add_commands(subparsers):
    profile = subparsers.add_parser(
        "profile", help="rank a model's Transformer blocks by activation norms on calibration text",
        description="Run a model over a few calibration batches and score each Transformer block by the norm "
                    "of its activations (the Act-LoRA importance). Prints the ranking; optionally writes "
                    "the scores (JSON, for `act-lora select`) and a plot.")
    profile.add_argument("model", metavar="MODEL",
                         help="model folder or hub name (offline: must be cached); 'minilm' is the bundled "
                              "all-MiniLM-L6-v2")
    source = profile.add_mutually_exclusive_group()
    source.add_argument("--data-dir", metavar="DIR",
                        help="GLUE folder (<DIR>/SST-2/train.tsv, ...); calibrate on --task's training texts")
    source.add_argument("--text-file", metavar="FILE", help="calibrate on this file's non-empty lines")
    profile.add_argument("--task", help="GLUE task with --data-dir (default: sst2)")
    profile.add_argument("--metric", default="input_norm", choices=METRICS,
                         help="input_norm: mean token L2 norm of each targeted linear's input (the paper); "
                              "input_rms: the same as an RMS per entry; block_output: mean token norm of "
                              "each block's output (default: input_norm)")
    profile.add_argument("--samples", type=positive_int, default=128,
                         help="calibration texts drawn (default: 128; built-in sentences: all 32)")
    profile.add_argument("--batch-size", type=positive_int, default=16, help="texts per batch (default: 16)")
    profile.add_argument("--max-seq-len", type=positive_int, default=128,
                         help="truncate texts to this many tokens (default: 128)")
    profile.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default: 0)")
    profile.add_argument("--target-modules", type=target_modules, default=None, metavar="NAMES",
                         help="comma-separated linear names (PEFT-style suffixes) or 'all-linear' "
                              "(default: the architecture's attention and MLP projections)")
    profile.add_argument("--blocks", metavar="PATH",
                         help="module path of the block list, for architectures not recognised "
                              "(e.g. model.layers)")
    profile.add_argument("--out", metavar="JSON", help="write the scores here (input of `act-lora select`)")
    profile.add_argument("--plot", metavar="PNG", help="write a bar + cumulative-importance plot here")
    profile.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    profile.set_defaults(func=run_profile)

    select = subparsers.add_parser(
        "select", help="choose the blocks to put LoRA on from a scores file",
        description="Pick blocks from `act-lora profile` scores and print them with the LoRA parameter saving "
                    "against LoRA on every block. Give exactly one of --k, --fraction, --cumulative (none with "
                    "--strategy all).")
    select.add_argument("scores", metavar="SCORES_JSON", help="scores file written by `act-lora profile --out`")
    how_many = select.add_mutually_exclusive_group()
    how_many.add_argument("--k", type=positive_int, help="take this many blocks")
    how_many.add_argument("--fraction", type=float, help="take this fraction of the blocks, rounded up (0, 1]")
    how_many.add_argument("--cumulative", type=float,
                          help="take the fewest top blocks covering this share of the total score (0, 1] "
                               "(the paper's threshold)")
    select.add_argument("--strategy", default="top", choices=STRATEGIES,
                        help="top: highest scores (Act-LoRA); the others are baselines of the same size "
                             "(default: top)")
    select.add_argument("--seed", type=int, default=0, help="seed for --strategy random (default: 0)")
    select.add_argument("--r", type=positive_int, default=8, help="LoRA rank for the parameter count (default: 8)")
    select.add_argument("--model", metavar="PATH",
                        help="count parameters on this model when the scores file has no module shapes")
    select.set_defaults(func=run_select)

    stability = subparsers.add_parser(
        "stability", help="study: activation vs gradient layer rankings across seeds and GLUE tasks",
        description="Reproducible, offline study of ranking stability on the bundled MiniLM (or --model): for "
                    "each task and seed (the seed draws the calibration sample and the classifier head), the "
                    "activation and the gradient profiles; prints Kendall tau / Spearman rho / top-k overlap.")
    stability.add_argument("--model", default="minilm", help="model folder (default: the bundled MiniLM)")
    stability.add_argument("--data-dir", metavar="DIR",
                           help="GLUE folder; every task present of RTE, MRPC, CoLA, STS-B, SST-2 is used "
                                "(default: built-in sentences with seeded random labels)")
    stability.add_argument("--tasks", type=csv_list, metavar="NAMES",
                           help="comma-separated GLUE tasks to use (default: all present)")
    stability.add_argument("--seeds", type=positive_int, default=10, help="seeds per task, >= 2 (default: 10)")
    stability.add_argument("--head-warmup-steps", type=int, default=16,
                           help="head-only training steps before the gradient ranking (default 16; 0: random head)")
    stability.add_argument("--samples", type=positive_int, default=64,
                           help="calibration examples per seed (default: 64)")
    stability.add_argument("--batch-size", type=positive_int, default=16, help="examples per batch (default: 16)")
    stability.add_argument("--max-seq-len", type=positive_int, default=128, help="token limit (default: 128)")
    stability.add_argument("--k", type=positive_int, help="top-k for the overlap (default: half the blocks)")
    stability.add_argument("--out", metavar="DIR",
                           help="write stability.json, stability.png and stability.txt here")
    stability.add_argument("--no-progress", action="store_true", help="print nothing until the table")
    stability.set_defaults(func=run_stability)


def run_profile(args):
    from transformers import AutoTokenizer

    from ..method.calibration import load_examples, make_batches, sample_examples
    from ..method.profiling import profile_activations
    from ..model.hf import load_backbone

    from ..train.outputs import check_output_dir

    for option, target in (("--out", args.out), ("--plot", args.plot)):
        if target and os.path.isdir(target):  # checked before profiling, not after it
            raise IsADirectoryError(f"{option} {target} is a directory; give a file path")
        if target:  # its folder: not a file, writable
            check_output_dir(os.path.dirname(os.path.abspath(target)), option=f"{option} {target}: folder")
    path = model_location(args.model)
    task = args.task if args.task is not None or args.data_dir is None else "sst2"
    examples = load_examples(data_dir=args.data_dir, task=task, text_file=args.text_file)  # before the model
    examples = sample_examples(examples, args.samples, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_backbone(path)
    batches = make_batches(tokenizer, examples, batch_size=args.batch_size, max_seq_len=args.max_seq_len)
    scores = profile_activations(model, batches, target_modules=args.target_modules, metric=args.metric,
                                 progress=not args.no_progress, blocks=args.blocks)
    scores.meta.update(model=args.model, samples=len(examples),
                       data=args.data_dir and f"{args.data_dir}:{args.task}" or args.text_file or "builtin")
    total = sum(scores.scores) or 1.0
    print(f"{len(scores)} blocks at {scores.block_path}, metric {scores.metric}, {scores.num_tokens} tokens")
    print(f"{'rank':>4} {'block':>5} {'score':>12} {'share':>7} {'cumulative':>10}")
    running = 0.0
    for rank, index in enumerate(scores.ranking(), start=1):
        running += scores.scores[index]
        print(f"{rank:>4} {index:>5} {scores.scores[index]:>12.5f} {scores.scores[index] / total:>7.1%} "
              f"{running / total:>10.1%}")
    if args.out:
        scores.to_json(args.out)
        print(f"scores written to {args.out}")
    if args.plot:
        scores.plot(args.plot)
        print(f"plot written to {args.plot}")


def run_select(args):
    from ..method.scores import LayerScores
    from ..method.selection import select_layers

    scores = LayerScores.from_json(args.scores)
    layers = select_layers(scores, k=args.k, fraction=args.fraction, cumulative=args.cumulative,
                           strategy=args.strategy, seed=args.seed)
    print(f"layers: {layers}  ({len(layers)} of {len(scores)} blocks, strategy {args.strategy})")
    if scores.module_shapes:
        chosen, everything = scores.lora_parameters(layers, args.r), scores.lora_parameters(None, args.r)
    elif args.model:
        from ..model.anatomy import find_blocks
        from ..model.hf import load_backbone
        from ..model.inject import count_lora_parameters

        model = load_backbone(args.model)
        stack = find_blocks(model, _block_path_for(model, scores.block_path))
        if len(stack) != len(scores):
            raise ValueError(f"--model {args.model} has {len(stack)} blocks (at {stack.path}), but {args.scores} "
                             f"scores {len(scores)}: the scores come from another model")
        chosen = count_lora_parameters(model, layers, r=args.r, blocks=stack.path)
        everything = count_lora_parameters(model, None, r=args.r, blocks=stack.path)
    else:
        print("(no module shapes in the scores file: pass --model to count parameters)")
        return 0
    print(f"LoRA parameters at r={args.r}: {chosen:,} vs {everything:,} on all blocks "
          f"({chosen / everything:.1%}; saving {1 - chosen / everything:.1%})")
    return 0


def _block_path_for(model, recorded):
    """The scores file's block path when `model` has a module there, else None (the anatomy finds it)."""
    return recorded if recorded and recorded in dict(model.named_modules()) else None


def run_stability(args):
    from ..method.stability import stability_study
    from ..train.lock import output_dir_lock

    with output_dir_lock(args.out, option="--out"):  # checked before the study; one study per folder
        summary = stability_study(model=args.model, data_dir=args.data_dir, tasks=args.tasks, seeds=args.seeds,
                                  samples=args.samples, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                                  k=args.k, head_warmup_steps=args.head_warmup_steps, out_dir=args.out,
                                  progress=not args.no_progress)
    print(summary["table"])
    if args.out:
        print(f"results written to {args.out}/stability.json, .png and .txt")
    return 0
