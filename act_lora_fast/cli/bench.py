"""`act-lora bench-scaling`: step time and memory against the number of selected blocks."""
import os

from ..functional import BACKENDS
from ..measure.accounting import CLOCKS
from ..measure.scaling import PLACEMENTS
from ._args import positive_int


def add_commands(subparsers):
    parser = subparsers.add_parser(
        "bench-scaling",
        help="measure step time (forward/backward/optimizer) and memory for k = 1..L selected blocks",
        description="For k = 1..L selected blocks under the top-k / bottom-k / activation-ranked placements, "
                    "train a few steps on a fresh copy of the model; fit time and memory against k; write "
                    "DIR/scaling.json, DIR/cost_model.json and PNG plots.")
    parser.add_argument("--model", default="minilm",
                        help="Hugging Face model folder, or 'minilm' for the bundled MiniLM (default)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--seq-len", type=positive_int, default=64)
    parser.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=PLACEMENTS)
    parser.add_argument("--ks", nargs="+", type=positive_int, default=None,
                        help="numbers of selected blocks to measure (default: 1..L)")
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="interleaved measurement rounds (medians are reported)")
    parser.add_argument("--steps", type=positive_int, default=2, help="measured steps per round")
    parser.add_argument("--warmup-steps", type=int, default=1, help="unmeasured steps per round")
    parser.add_argument("--r", type=positive_int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--target-modules", nargs="+", default=["all-linear"],
                        help="'all-linear' (default) or module names")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--clock", default="wall", choices=CLOCKS,
                        help="time in wall-clock seconds (default) or CPU seconds of this process (CPU only; "
                             "stable on a shared machine, best with --threads 1)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_bench_scaling)


def run_bench_scaling(args):
    import torch

    from ..measure.cost import CostModel
    from ..measure.harness import BenchSettings
    from ..measure.report import format_table, write_scaling
    from ..measure.scaling import ScalingConfig, run_scaling

    targets = args.target_modules[0] if args.target_modules == ["all-linear"] else args.target_modules
    settings = BenchSettings(r=args.r, alpha=args.alpha, target_modules=targets, steps=args.steps,
                             warmup_steps=args.warmup_steps, backend=args.backend, clock=args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ScalingConfig(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len,
                           placements=tuple(args.placements), ks=tuple(args.ks) if args.ks else None,
                           rounds=args.rounds, device=args.device, seed=args.seed, progress=not args.no_progress,
                           settings=settings)
    results = run_scaling(config)
    paths = write_scaling(results, args.out)
    cost_path = os.path.join(args.out, "cost_model.json")
    CostModel.from_dict(results["cost_model"]).save(cost_path)
    print(format_table(results))
    print(f"\n{results['seconds']:.0f} s; wrote " + ", ".join(paths + [cost_path]))
    return 0
