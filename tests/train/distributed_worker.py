"""Run by tests/train/test_distributed_decoders.py under ``torchrun --nproc-per-node 2`` (gloo, CPU): every
multi-process scenario of the decoder path in one launch. Each rank writes ``rank<R>.json``; rank 0 also writes
the gathered gradients (``grads-<name>.safetensors``). The test compares them with a single process, which
builds its models and batches with the functions here.

    python -m torch.distributed.run --nproc-per-node 2 tests/train/distributed_worker.py MODEL OUT CLI_ARGS_JSON
"""
import contextlib
import json
import os
import sys

import torch

from act_lora_fast.model.hf import load_causal_lm
from act_lora_fast.model.inject import apply_act_lora, lora_modules
from act_lora_fast.train.config import TrainConfig
from act_lora_fast.train.tasks import TextTask
from tests.models import EVAL_TEXT, TRAIN_TEXT

LAYERS = [1, 3]


def run_config(model, **overrides):
    """The trainer's settings of every run here (per rank: batch 4; one process: pass batch_size=8)."""
    values = dict(model=model, task="text", train_file=TRAIN_TEXT, eval_file=EVAL_TEXT, epochs=1, batch_size=4,
                  max_seq_len=40, max_train_samples=32, max_eval_samples=15, calibration_samples=16, fraction=0.5,
                  progress=False, plots=False)
    values.update(overrides)
    return TrainConfig(**values)


def lora_model(path, *, dropout=0.0, checkpoint=None, peft=False):
    """The tiny Llama with LoRA on blocks 1 and 3 (ours, or PEFT's under patch_peft), B drawn non-zero, seeded."""
    torch.manual_seed(0)
    model, _ = load_causal_lm(path)
    if checkpoint:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": checkpoint == "reentrant"})
    if peft:
        import act_lora_fast
        from peft import LoraConfig, get_peft_model

        with act_lora_fast.peft_patched():
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, layers_to_transform=LAYERS,
                                                     target_modules=["q_proj", "v_proj", "down_proj"]))
        b_weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    else:
        apply_act_lora(model, LAYERS, r=4, alpha=8, dropout=dropout, verbose=False)
        b_weights = [layer.lora_B.weight for layer in lora_modules(model).values()]
    with torch.no_grad():
        for weight in b_weights:  # B != 0: the gradient reaches A too
            weight.normal_(std=0.1)
    return model.train()


def whole_batch(path):
    """One global batch of 8 training examples and its loss-token count."""
    task, config = TextTask(), run_config(path)
    _, tokenizer = load_causal_lm(path)
    train_set, _ = task.datasets(task.load_data(config), tokenizer, config)
    batch = train_set.collate([train_set[i] for i in range(8)])
    return batch, task.loss_items(batch)


class FusedCalls:
    """Counts the fused op's calls through `module` and the types of the base weights it was handed."""

    def __init__(self, module):
        self.module, self.real, self.calls, self.weight_types = module, module.lora_linear, 0, set()

    def __call__(self, x, weight, *args, **kwargs):
        self.calls += 1
        self.weight_types.add(type(weight).__name__)
        return self.real(x, weight, *args, **kwargs)

    @contextlib.contextmanager
    def watching(self):
        self.module.lora_linear = self
        try:
            yield self
        finally:
            self.module.lora_linear = self.real


def summary(report):
    keys = ("selected_layers", "history", "loss_curve", "optimizer_steps", "devices", "status")
    return {key: report[key] for key in keys} | {"scores": (report["layer_scores"] or {}).get("scores")}


def main(model_path, out, cli_args):
    from safetensors.torch import save_file

    from act_lora_fast import layer as layer_module
    from act_lora_fast.cli.main import main as cli_main
    from act_lora_fast.model import peft_layer
    from act_lora_fast.train import loop
    from act_lora_fast.train.compare import run_compare
    from act_lora_fast.train.distributed import (init_distributed, load_sharded_adapter_weights, save_sharded_adapter,
                                                 shard_model)

    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    record = {"rank": ctx.rank, "fused_calls": {}, "errors": {}}

    # ---- the trainer: DDP (with reentrant checkpointing: DDP's static graph), then FSDP2 with the fused op
    # watched; the test compares both with one process (no checkpointing)
    record["ddp"] = summary(loop.train(run_config(model_path, output_dir=f"{out}/ddp",
                                                  gradient_checkpointing="reentrant")).report)
    with FusedCalls(layer_module).watching() as watched:
        record["fsdp"] = summary(loop.train(run_config(model_path, fsdp=True, output_dir=f"{out}/fsdp")).report)
    record["fsdp_fused"] = {"calls": watched.calls, "weight_types": sorted(watched.weight_types)}

    # ---- a run killed during step 4 (the step-2 evaluation's adapter is on disk), then resumed from that adapter
    real_step = loop._Run._optimizer_step

    def dies_at_step_four(run):
        if run.step == 3:
            raise KeyboardInterrupt
        real_step(run)

    loop._Run._optimizer_step = dies_at_step_four
    try:
        loop.train(run_config(model_path, fsdp=True, eval_steps=2, output_dir=f"{out}/killed"))
        record["killed"] = "finished"
    except KeyboardInterrupt:
        record["killed"] = "interrupted"
    loop._Run._optimizer_step = real_step
    record["resumed"] = summary(loop.train(run_config(model_path, fsdp=True, fraction=None, output_dir=f"{out}/resumed",
                                                      resume_from=f"{out}/killed/adapter")).report)

    # ---- one step's gradients on the same global batch, split over the ranks
    batch, tokens = whole_batch(model_path)
    batch = {key: value[ctx.rank::2] for key, value in batch.items()}

    def gradients(name, *, engine, reshard=True, param_dtype=None, **build):
        model = lora_model(model_path, **build)
        if engine == "fsdp":
            runner = shard_model(model, reshard_after_forward=reshard, param_dtype=param_dtype)
        else:  # a checkpointed block runs twice in a step: DDP needs the static graph (as the trainer sets it)
            runner = torch.nn.parallel.DistributedDataParallel(model, static_graph=build.get("checkpoint") is not None)
        torch.manual_seed(100 + ctx.rank)  # the dropout seeds each rank draws
        with FusedCalls(peft_layer if build.get("peft") else layer_module).watching() as counter:
            (TextTask.loss(runner, batch) * ctx.world_size / tokens).backward()  # the trainer's token weighting
        grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).float().contiguous()
                 for n, p in model.named_parameters() if p.grad is not None}
        if ctx.is_main:
            save_file(grads, f"{out}/grads-{name}.safetensors")
        record["fused_calls"][name] = counter.calls
        return model

    for engine in ("ddp", "fsdp"):
        gradients(engine, engine=engine)
        for checkpoint in (None, "non-reentrant", "reentrant"):
            gradients(f"{engine}-dropout-{checkpoint}", engine=engine, dropout=0.2, checkpoint=checkpoint)
    gradients("fsdp-keep", engine="fsdp", reshard=False)
    gradients("fsdp-bf16", engine="fsdp", param_dtype=torch.bfloat16)
    gradients("peft-fsdp", engine="fsdp", peft=True)
    sharded = gradients("fsdp-again", engine="fsdp")

    # ---- what must fail clearly on a sharded model: a layer called outside its block's forward, merging
    layer = next(iter(lora_modules(sharded).values()))
    for what, action in (("direct call", lambda: layer(torch.randn(2, layer.in_features))), ("merge", layer.merge)):
        try:
            action()
            record["errors"][what] = None
        except (TypeError, RuntimeError) as err:
            record["errors"][what] = f"{type(err).__name__}: {err}"

    # ---- the FSDP run's saved adapter, loaded into a freshly sharded model's shards and gathered again
    fresh, _ = load_causal_lm(model_path)
    apply_act_lora(fresh, record["fsdp"]["selected_layers"], r=8, alpha=16, verbose=False)
    shard_model(fresh)
    load_sharded_adapter_weights(fresh, f"{out}/fsdp/adapter")
    save_sharded_adapter(fresh, f"{out}/reloaded", ctx)

    # ---- compare with FSDP2 training runs (profiles and timing on each rank's whole model)
    result = run_compare(run_config(model_path, fsdp=True), fractions=[0.5], baselines=[], seeds=1, timing=False,
                         output_dir=f"{out}/compare")
    record["compare"] = [v["name"] for v in result.variants]

    # ---- the README's FSDP command as torchrun runs it (last: the command ends the process group)
    record["cli_exit"] = cli_main(cli_args)
    with open(os.path.join(out, f"rank{ctx.rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
