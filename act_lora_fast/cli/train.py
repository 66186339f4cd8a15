"""Subcommands `train`, `compare` and `demo` (the logic lives in `act_lora_fast.train`)."""
import argparse
import contextlib
import os

from .. import _dist
from ..functional import BACKENDS
from ..train.compare import (ACTIVATION_METRICS, BASELINES, DEFAULT_BASELINES, DEFAULT_RANDOM_DRAWS,
                             GRADIENT_WARMUP_STEPS)
from ..train.config import CHECKPOINTING, PRECISIONS, SELECTIONS, TrainConfig
from ._args import csv_floats, csv_list, model_location


class _Given(argparse.Action):
    """Stores the value and notes the option as given on the command line (``args.given``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", set()) | {self.dest}


def _seeds(text):
    """--seeds: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    text = text.strip()
    if "," in text:
        return [int(s) for s in csv_list(text)]
    return int(text)


def _add_run_options(parser):
    """Options shared by `train` and `compare` (everything in TrainConfig but the selection)."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", default="minilm",
                      help="model folder or hub id; 'minilm' is the bundled MiniLM (default)")
    data.add_argument("--data-dir", help="GLUE data in GLUE's TSV layout (<dir>/<TASK>/train.tsv, dev.tsv); "
                                         "without it the hub's nyu-mll/glue is used when reachable")
    data.add_argument("--train-file", help="--task text: the training text, .jsonl ({'text'}, {'prompt', "
                                           "'completion'} or {'messages'} per line) or .txt (blank-line separated)")
    data.add_argument("--eval-file", help="--task text: the evaluation text (default: --eval-fraction of --train-file)")
    data.add_argument("--eval-fraction", type=float, default=0.1,
                      help="--task text without --eval-file: the seeded share of rows held out (default 0.1)")
    data.add_argument("--max-train-samples", type=int, help="a seeded random subset of the training set")
    data.add_argument("--max-eval-samples", type=int, help="the first N examples of each dev split")
    data.add_argument("--max-seq-len", type=int, default=128)
    data.add_argument("--calibration-samples", type=int, default=256,
                      help="training examples profiled to rank the blocks (default 256)")
    lora = parser.add_argument_group("adapter")
    # _Given records the options typed, so that --resume-from can tell a conflicting value from a default
    lora.add_argument("--r", "--rank", dest="r", type=int, default=8, action=_Given)
    lora.add_argument("--alpha", type=float, default=16, action=_Given)
    lora.add_argument("--dropout", type=float, default=0.0, action=_Given)
    lora.add_argument("--target-modules", help="comma-separated module names, or 'all-linear' "
                                               "(default: the architecture's attention and MLP linears)")
    lora.add_argument("--modules-to-save", help="comma-separated modules trained in full (default: the "
                                                "classification head: classifier, pooler, ...; none for --task text)")
    lora.add_argument("--backend", default="auto", choices=BACKENDS)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=3)
    opt.add_argument("--batch-size", type=int, default=8, help="per device (default 8)")
    opt.add_argument("--eval-batch-size", type=int, default=64)
    opt.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=2e-3)
    opt.add_argument("--weight-decay", type=float, default=0.01)
    opt.add_argument("--warmup-ratio", type=float, default=0.06)
    opt.add_argument("--grad-accum-steps", type=int, default=1)
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="0 turns clipping off")
    opt.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="autocast dtype; auto: bf16 (or fp16) on CUDA, fp32 on CPU")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--group-by-length", action="store_true",
                     help="batch examples of similar length (less padding, faster; ~1-2 points lower on SST-2 "
                          "in one-epoch runs)")
    opt.add_argument("--eval-steps", type=int, help="also evaluate every N steps (the best adapter is kept)")
    opt.add_argument("--loraplus-lr-ratio", type=float,
                     help="LoRA+: lora_B's learning rate is this many times --lr (default: plain LoRA)")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--fsdp", action="store_true",
                       help="under torchrun: shard with FSDP2 (fully_shard per block, then the root) instead of DDP's "
                            "replicas")
    scale.add_argument("--no-reshard-after-forward", dest="reshard_after_forward", action="store_false",
                       help="--fsdp: keep each block's gathered weights from forward to backward (more memory, "
                            "less communication)")
    scale.add_argument("--gradient-checkpointing", nargs="?", const="non-reentrant", choices=CHECKPOINTING,
                       help="recompute each block's activations in backward (default kind: non-reentrant)")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's report.json, adapter/ and plots in --output-dir (without "
                          "it such a folder is refused; other files there are never touched)")
    run.add_argument("--no-save-adapter", action="store_true", help="don't save the best epoch's adapter")
    run.add_argument("--no-plots", action="store_true")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_from_args(args, **overrides):
    values = dict(
        model=model_location(args.model), task=args.task, data_dir=args.data_dir, train_file=args.train_file,
        eval_file=args.eval_file, eval_fraction=args.eval_fraction, fsdp=args.fsdp,
        reshard_after_forward=args.reshard_after_forward, gradient_checkpointing=args.gradient_checkpointing,
        output_dir=args.output_dir, calibration_samples=args.calibration_samples, r=args.r, alpha=args.alpha,
        dropout=args.dropout,
        target_modules=(args.target_modules if args.target_modules in (None, "all-linear")
                        else csv_list(args.target_modules)),
        modules_to_save=csv_list(args.modules_to_save) if args.modules_to_save else None,
        backend=args.backend, epochs=args.epochs, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, grad_accum_steps=args.grad_accum_steps,
        max_grad_norm=args.max_grad_norm or None, precision=args.precision, seed=args.seed,
        group_by_length=args.group_by_length, eval_steps=args.eval_steps,
        loraplus_lr_ratio=args.loraplus_lr_ratio, max_seq_len=args.max_seq_len,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples, device=args.device,
        save_adapter=not args.no_save_adapter, plots=not args.no_plots, progress=not args.no_progress,
        overwrite=args.overwrite)
    values.update(overrides)
    return TrainConfig(**values)


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def _train(args):
    from ..train.distributed import cleanup_distributed
    from ..train.loop import train

    saved = _check_resume_options(args) if args.resume_from else {}
    try:
        layers = [int(i) for i in csv_list(args.layers)] if args.layers else None
    except ValueError:
        raise ValueError(f"--layers must be comma-separated block indices, e.g. 2,3,4; got {args.layers!r}") from None
    config = _config_from_args(args, selection="fixed" if layers and not args.selection else args.selection,
                               k=args.k, fraction=args.fraction, cumulative=args.cumulative,
                               resume_from=args.resume_from, layers=layers, metric=args.metric,
                               gradient_warmup_steps=args.gradient_warmup_steps,
                               **{k: v for k, v in saved.items() if k not in getattr(args, "given", ())})
    if not config.output_dir and _dist.is_main_process():
        print("no --output-dir: the report and the adapter will not be saved", flush=True)
    try:
        report = train(config).report
    finally:
        cleanup_distributed()
    if _dist.is_main_process():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
        times = report["step_time_ms"]
        memory = report["memory"]
        print(f"{report['task']}: {metrics} ({report['score_name']} {report['score']:.4g}, best epoch "
              f"{report['best_epoch']})")
        print(f"layers {report['selected_layers']} of {report['num_layers']} ({report['selection_label']}); "
              f"trainable parameters {report['trainable_parameters']:,} (LoRA {report['lora_parameters']:,})")
        print(f"step {times['step']:.1f} ms = forward {times['forward']:.1f} + backward {times['backward']:.1f} "
              f"+ optimizer {times['optimizer']:.1f}; {report['tokens_per_s']:.0f} tokens/s")
        print(f"memory ({memory['source']}): after forward {_mib(memory['after_forward_bytes'])}, peak backward "
              f"{_mib(memory['peak_backward_bytes'])}, after optimizer {_mib(memory['after_optimizer_bytes'])}; "
              f"{report['device_hours']:.4f} device-hours")
        if config.output_dir:
            print(f"report: {os.path.join(config.output_dir, 'report.json')}")
    return 0


def _check_resume_options(args):
    """--resume-from trains the adapter's own blocks and r/alpha/dropout: a selection option, or a different
    value of those, given with it is refused. Returns the adapter's values (the run's config takes them where no option was given)."""
    from ..model.adapters import read_adapter_config

    for option in ("selection", "k", "fraction", "cumulative", "layers"):
        if getattr(args, option) is not None:
            raise ValueError(f"--{option} conflicts with --resume-from: a resumed run trains the adapter's own "
                             f"blocks; drop --{option}")
    adapter = read_adapter_config(args.resume_from)
    saved = {"r": adapter["r"], "alpha": adapter["lora_alpha"], "dropout": adapter.get("lora_dropout", 0.0)}
    for name, value in saved.items():
        given = getattr(args, name)
        if name in getattr(args, "given", ()) and given != value:
            raise ValueError(f"--{name} {given:g} conflicts with the adapter in --resume-from {args.resume_from} "
                             f"({name}={value:g}); a resumed run trains the adapter as saved: drop --{name}")
    return saved


def _compare(args):
    from ..measure.timing import TimingSettings
    from ..train.compare import (SUMMARY_OUTPUTS, claim_compare_dir, run_compare, seed_list, summarize,
                                 variant_specs, write_compare_outputs)
    from ..train.distributed import cleanup_distributed
    from ..train.lock import output_dir_lock
    from ..train.outputs import claim_output_dir

    timing = False if args.no_timing else TimingSettings(rounds=args.timing_rounds, steps=args.timing_steps,
                                                         clock=args.clock)

    tasks = csv_list(args.task)
    if not tasks:
        raise ValueError("--task needs at least one task name")  # main reports it: exit 2, one line
    fractions, baselines = csv_floats(args.fractions), csv_list(args.baselines)
    # every task's config, then every folder, checked before the first run starts (and before any is created)
    planned = [(os.path.join(args.output_dir, task) if len(tasks) > 1 else args.output_dir,
                variant_specs(fractions, baselines, args.baseline_fraction),
                seed_list(args.seeds, _config_from_args(args, task=task, output_dir=None))) for task in tasks]
    with contextlib.ExitStack() as locks:  # one command per folder: the second is refused, naming the first
        main = _dist.is_main_process()
        for folder in dict.fromkeys([args.output_dir, *(output_dir for output_dir, _, _ in planned)]):
            locks.enter_context(output_dir_lock(folder if main else None, option="--output-dir"))
        for output_dir, specs, seeds in planned:
            if main and not args.resume:
                claim_compare_dir(output_dir, specs, seeds=seeds, random_draws=args.random_draws,
                                  overwrite=args.overwrite)
        if len(tasks) > 1 and main:
            claim_output_dir(args.output_dir, overwrite=args.overwrite, owned=SUMMARY_OUTPUTS,
                             option="--output-dir")
        results = []
        try:
            for task in tasks:
                output_dir = os.path.join(args.output_dir, task) if len(tasks) > 1 else args.output_dir
                base = _config_from_args(args, task=task, output_dir=None)
                def on_run(config, report, task=task):
                    if _dist.is_main_process():
                        print(f"[{task}] seed {config.seed} {report['variant']}: last-epoch "
                              f"{report['score_name']} {report['history'][-1]['score']:.4g}, "
                              f"{report['wall_seconds']:.0f} s, layers "
                              f"{report['selected_layers']}", flush=True)
                result = run_compare(base, fractions=fractions, baselines=baselines,
                                     baseline_fraction=args.baseline_fraction, seeds=args.seeds,
                                     random_draws=args.random_draws, metric=args.metric,
                                     gradient_warmup_steps=args.gradient_warmup_steps, timing=timing,
                                     output_dir=output_dir, on_run=on_run, progress=not args.no_progress,
                                     resume=args.resume)
                results.append(result)
                if _dist.is_main_process():
                    print("\n" + result.markdown() + "\n", flush=True)
        finally:
            cleanup_distributed()
        if len(results) > 1 and main:
            summary = summarize(results)
            write_compare_outputs(summary, args.output_dir, stem="summary")
            print(summary.markdown())
    return 0


def _demo(args):
    from ..train.demo import DemoConfig, run_demo
    from ..train.lock import output_dir_lock

    defaults = DemoConfig()
    model = model_location(args.model) if args.model else None
    config = DemoConfig(output_dir=args.output_dir, model=model, data_dir=args.data_dir, task=args.task,
                        fraction=args.fraction, epochs=args.epochs, batch_size=args.batch_size,
                        max_train_samples=args.max_train_samples or defaults.max_train_samples,
                        max_seq_len=args.max_seq_len, seed=args.seed, progress=not args.no_progress)
    with output_dir_lock(config.output_dir, option="--output-dir"):  # one demo per folder
        run_demo(config)
    return 0


def add_commands(subparsers):
    train = subparsers.add_parser("train", help="fine-tune with (selective) LoRA on a GLUE task",
                                  description="Fine-tune a sequence classifier with LoRA on all blocks or on "
                                              "the blocks Act-LoRA (or a baseline) selects; evaluates each "
                                              "epoch, saves the best adapter and writes OUT/report.json. "
                                              "Runs data-parallel under torchrun.")
    train.add_argument("--task", default="sst2", help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, or text "
                                                       "(a causal LM on --train-file)")
    train.add_argument("--output-dir", help="where report.json, plots and the adapter go")
    sel = train.add_argument_group("layer selection")
    sel.add_argument("--selection", choices=SELECTIONS,
                     help="default: activation (Act-LoRA) when --k/--fraction/--cumulative is given, else all")
    how_many = sel.add_mutually_exclusive_group()
    how_many.add_argument("--k", type=int, help="number of blocks")
    how_many.add_argument("--fraction", type=float, help="fraction of the blocks, e.g. 0.5")
    how_many.add_argument("--cumulative", type=float, help="fewest top blocks covering this share of the score")
    sel.add_argument("--layers", help="comma-separated block indices (selection 'fixed', chosen beforehand)")
    sel.add_argument("--metric", default="input_norm", choices=ACTIVATION_METRICS,
                     help="the activation score (default input_norm; update = Σ‖x‖·‖dy‖, needs a layer with it)")
    sel.add_argument("--gradient-warmup-steps", type=int, default=0,
                     help="--selection gradient: head-only training steps before scoring (default 0: random head)")
    train.add_argument("--resume-from", help="a saved adapter folder to continue training (its layers are used)")
    _add_run_options(train)
    train.set_defaults(func=_train)

    compare = subparsers.add_parser("compare", help="all-layer LoRA vs Act-LoRA vs baselines, as a table",
                                    description="Train all-layer LoRA, Act-LoRA at each fraction and each "
                                                "baseline on one task (or several, comma-separated, plus "
                                                "their average) and print the paper-style table; writes "
                                                "compare.md, compare.json and compare.png.")
    compare.add_argument("--task", default="sst2", help="a task, or several comma-separated (e.g. rte,mrpc)")
    compare.add_argument("--output-dir", default="act-lora-compare")
    compare.add_argument("--fractions", default="0.25,0.5,0.75", help="Act-LoRA fractions (default 0.25,0.5,0.75)")
    compare.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                         help=f"comma-separated from {', '.join(BASELINES)} ('' for none; default "
                              f"{','.join(DEFAULT_BASELINES)})")
    compare.add_argument("--baseline-fraction", type=float, default=0.5)
    compare.add_argument("--seeds", type=_seeds, default=None,
                         help="a count N (seeds 0..N-1) or a list (0,3,7): every variant is trained on each; "
                              "default: --seed only")
    compare.add_argument("--random-draws", type=int, default=DEFAULT_RANDOM_DRAWS,
                         help="random@ baseline: at least this many draws in all, from its own seed stream "
                              f"(default {DEFAULT_RANDOM_DRAWS})")
    compare.add_argument("--metric", default="input_norm", choices=ACTIVATION_METRICS,
                         help="the activation score Act-LoRA ranks by (default input_norm; update = "
                              "Σ‖x‖·‖dy‖ from the backward, needs a layer that provides it)")
    compare.add_argument("--gradient-warmup-steps", type=int, default=GRADIENT_WARMUP_STEPS,
                         help="head-only training steps before gradient (and update) scoring "
                              f"(default {GRADIENT_WARMUP_STEPS}; 0: a random head)")
    compare.add_argument("--clock", default="process", choices=("process", "wall"),
                         help="timing phase clock: process CPU seconds (default; robust on a shared CPU) or wall")
    compare.add_argument("--timing-rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    compare.add_argument("--timing-steps", type=int, default=2, help="measured steps per round (default 2)")
    compare.add_argument("--resume", action="store_true",
                         help="keep the finished runs of OUT/compare.json (same settings) and train the rest, "
                              "e.g. to add seeds")
    compare.add_argument("--no-timing", action="store_true",
                         help="skip the timing phase; report the training runs' own step times (not comparable "
                              "on a shared machine)")
    _add_run_options(compare)
    compare.set_defaults(func=_compare)

    demo = subparsers.add_parser("demo", help="the whole method in minutes, offline: profile, rank, compare",
                                 description="Profile the bundled MiniLM, show its block ranking, fine-tune "
                                             "all-layer LoRA and Act-LoRA at half of the blocks (--fraction) and print the "
                                             "comparison. Uses --data-dir GLUE data when given, the hub when "
                                             "reachable, else a small generated task (and says so).")
    demo.add_argument("--output-dir", default="act-lora-demo")
    demo.add_argument("--data-dir", help="GLUE data in GLUE's TSV layout (optional)")
    demo.add_argument("--task", default="sst2", help="GLUE task used with --data-dir (default sst2)")
    demo.add_argument("--model", help="a model folder instead of the bundled MiniLM")
    demo.add_argument("--fraction", type=float, default=0.5)
    demo.add_argument("--epochs", type=int, default=1)
    demo.add_argument("--max-train-samples", type=int, help="GLUE training subset (default 2000)")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--max-seq-len", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)

