"""The fused update score Σ_t ‖x_t‖·‖dy_t‖ (metric="update") against a float64 pure-torch reference, and the
gradient baseline's head warm-up."""
import pytest
import torch
from torch import nn

from act_lora_fast.method.batches import align_mask
from act_lora_fast.method.profiling import _seeded_head, profile_activations, profile_gradients, profile_updates
from act_lora_fast.model.anatomy import find_blocks, target_linears
from tests.models import tiny_model, token_batch

pytestmark = pytest.mark.usefixtures("one_thread")

def reference_update_scores(model, batches, seed):
    """Per module (1/T) Σ_t ‖x_t‖·‖dy_t‖ over real tokens, from forward hooks (x) and tensor hooks (dy)."""
    stack = find_blocks(model)
    modules = {n: m for block in target_linears(model, None, stack.path).values() for n, m in block.items()}
    sums = {n: torch.zeros((), dtype=torch.float64) for n in modules}
    counts = {n: torch.zeros((), dtype=torch.float64) for n in modules}
    mask = [None]

    def make_hook(name):
        def hook(module, args, output):
            x = args[0].detach()
            keep = align_mask(mask[0], x.shape[:-1]).to(torch.float64)
            x_norm = x.double().norm(dim=-1)
            counts[name] += keep.sum()

            def grad_hook(dy):
                sums[name] += (x_norm * dy.detach().double().norm(dim=-1) * keep).sum()
            output.register_hook(grad_hook)
        return hook

    hooks = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    model.eval()
    try:
        with _seeded_head(model, seed):
            embeddings = model.get_input_embeddings().weight
            embeddings.requires_grad_(True)
            for batch in batches:
                mask[0] = batch["attention_mask"].bool()
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                model(**inputs, labels=batch["labels"]).loss.backward()
            embeddings.requires_grad_(False)
    finally:
        for hook in hooks:
            hook.remove()
    return {n: float(sums[n] / counts[n]) for n in modules}


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_update_score_matches_float64_reference(kind):
    model = tiny_model(kind).double()
    for p in model.parameters():
        p.requires_grad_(False)
    batches = [token_batch(batch=3, seq=9, seed=s) for s in range(2)]
    expected = reference_update_scores(model, batches, seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = profile_updates(model, batches, seed=4, progress=False)
    assert result.metric == "update"
    for name, value in expected.items():
        assert result.module_scores[name] == pytest.approx(value, rel=1e-6), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert profile_activations(model, batches, metric="update", progress=False).scores == \
        pytest.approx(profile_updates(model, batches, progress=False).scores)


def test_gradient_head_warm_up_changes_the_scores_and_restores_the_model():
    model = tiny_model("bert")
    batches = [token_batch(batch=4, seq=9, seed=s) for s in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cold = profile_gradients(model, batches, seed=1, progress=False)
    warm = profile_gradients(model, batches, seed=1, head_warmup_steps=6, head_warmup_lr=5e-2, progress=False)
    assert warm.meta["head_warmup_steps"] == 6 and cold.meta["head_warmup_steps"] == 0
    assert warm.scores != pytest.approx(cold.scores, rel=1e-3)
    again = profile_gradients(model, batches, seed=1, head_warmup_steps=6, head_warmup_lr=5e-2, progress=False)
    assert again.scores == pytest.approx(warm.scores)  # deterministic: the warm-up is restored in between
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="head_warmup_steps must be an int >= 0"):
        profile_gradients(model, batches, head_warmup_steps=-1, progress=False)


def test_warm_up_trains_only_the_head():
    model = tiny_model("bert")
    batches = [token_batch(batch=4, seq=9, seed=s) for s in range(2)]
    from act_lora_fast.method.profiling import _warm_up_head

    with _seeded_head(model, 0) as heads:
        body = {n: p.clone() for n, p in model.named_parameters() if not n.startswith("classifier")}
        head = {n: p.clone() for n, p in model.named_parameters() if n.startswith("classifier")}
        _warm_up_head(model, heads, batches, 3, 1e-2, torch.device("cpu"))
        for name, param in model.named_parameters():
            if name in body:
                assert torch.equal(param, body[name]), name
            else:
                assert not torch.equal(param, head[name]), name
    assert isinstance(model.classifier, nn.Linear)
