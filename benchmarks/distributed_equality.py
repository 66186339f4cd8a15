"""FSDP2 vs DDP vs one process on CPU: how far apart the numbers are (the table in RESULTS.md §10).

    python benchmarks/distributed_equality.py --out benchmarks/results/decoders

Runs tests/train/distributed_worker.py once under ``torchrun --nproc-per-node 2`` (gloo) on the tests' tiny random
Llama (4 blocks, hidden 32) and the shipped instruction set, the same runs in one process (batch 8 = the ranks'
4 + 4), and prints the largest differences: per-step training loss, evaluation loss and the saved adapter of the
trainer (DDP with reentrant activation checkpointing, FSDP2 without; one process without), one step's
LoRA gradients (with FSDP2 resharding after forward or not, bf16 weights, PEFT's layers under ``patch_peft()``),
and activation checkpointing against none with LoRA dropout on. tests/train/test_distributed_decoders.py asserts
the same comparisons within its stated tolerances.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gap(actual, expected):
    """(max |Δ|, max |Δ| / max |reference|) over matching tensors (dicts of name -> tensor) or numbers."""
    import torch

    if isinstance(expected, dict):
        pairs = [(actual[k].double(), expected[k].double()) for k in expected]
    else:
        pairs = [(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))]
    absolute = max(float((a - b).abs().max()) for a, b in pairs)
    scale = max(float(b.abs().max()) for _, b in pairs)
    return absolute, absolute / scale if scale else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write equality.md and equality.json here")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from act_lora_fast.model.adapters import WEIGHTS_NAME
    from act_lora_fast.train.loop import train
    from act_lora_fast.train.tasks import TextTask
    from tests.models import write_tiny_llama
    from tests.test_readme import at_tiny_scale, readme_fsdp_command
    from tests.train.distributed_worker import lora_model, run_config, whole_batch

    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="act-lora-equality-")
    model = write_tiny_llama(os.path.join(work, "tiny-llama"))
    out = os.path.join(work, "two-ranks")
    os.makedirs(out)
    command = readme_fsdp_command()
    cli_args = at_tiny_scale(command[command.index("act_lora_fast.cli") + 1:], model, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    os.path.join(ROOT, "tests", "train", "distributed_worker.py"), model, out, json.dumps(cli_args)],
                   env=env, cwd=ROOT, check=True, capture_output=True)
    record = json.load(open(os.path.join(out, "rank0.json")))

    single_dir = os.path.join(work, "one-process")
    single = train(run_config(model, batch_size=8, output_dir=single_dir)).report
    batch, tokens = whole_batch(model)

    def reference_grads(**build):
        net = lora_model(model, **build)
        (TextTask.loss(net, batch) / tokens).backward()
        return {n: p.grad.float() for n, p in net.named_parameters() if p.grad is not None}

    grads = {"ours": reference_grads(), "peft": reference_grads(peft=True)}

    def saved(name):
        return load_file(os.path.join(out, f"grads-{name}.safetensors"))

    rows = []
    for engine, label in (("ddp", "DDP, reentrant checkpointing"), ("fsdp", "FSDP2")):
        run = record[engine]
        rows.append((f"training loss, 4 steps ({label} − 1 process)",
                     _gap([s["loss"] for s in run["loss_curve"]], [s["loss"] for s in single["loss_curve"]])))
        rows.append((f"eval loss ({label} − 1 process)",
                     _gap(run["history"][0]["metrics"]["loss"], single["history"][0]["metrics"]["loss"])))
        rows.append((f"saved adapter, 28 tensors ({label} − 1 process)",
                     _gap(load_file(os.path.join(out, engine, "adapter", WEIGHTS_NAME)),
                          load_file(os.path.join(single_dir, "adapter", WEIGHTS_NAME)))))
    for name, label, reference in (("ddp", "DDP", "ours"), ("fsdp", "FSDP2", "ours"),
                                   ("fsdp-keep", "FSDP2, no reshard after forward", "ours"),
                                   ("fsdp-bf16", "FSDP2, bf16 weights", "ours"),
                                   ("peft-fsdp", "FSDP2, PEFT under patch_peft()", "peft")):
        rows.append((f"one step's LoRA gradients ({label} − 1 process)", _gap(saved(name), grads[reference])))
    for engine, label in (("ddp", "DDP"), ("fsdp", "FSDP2")):
        for kind in ("non-reentrant", "reentrant"):
            rows.append((f"gradients, dropout 0.2: {kind} checkpointing − none ({label})",
                         _gap(saved(f"{engine}-dropout-{kind}"), saved(f"{engine}-dropout-None"))))
    rows.append(("(for scale) gradients, dropout 0.2 − dropout 0 (FSDP2)",
                 _gap(saved("fsdp-dropout-None"), saved("fsdp"))))

    lines = ["| compared | max abs Δ | max abs Δ / max abs reference |", "|---|---:|---:|"]
    lines += [f"| {what} | {a:.2e} | {r:.2e} |" for what, (a, r) in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "equality.md"), "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        with open(os.path.join(args.out, "equality.json"), "w", encoding="utf-8") as handle:
            json.dump({what: {"max_abs": a, "max_rel": r} for what, (a, r) in rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
