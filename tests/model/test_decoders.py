"""The decoder families the causal-LM path supports, each built tiny from its transformers config: the blocks and
targets are found, LoRA is the identity at init, profiling and selection work, one training step moves only the
adapter, and the saved adapter loads in plain PEFT to the same logits."""
import copy

import pytest
import torch

from act_lora_fast import apply_act_lora, profile_activations, save_adapter, select_layers
from act_lora_fast.data.text import token_loss_sum
from act_lora_fast.model.anatomy import default_target_modules, find_blocks, target_linears
from act_lora_fast.model.inject import lora_modules
from tests.models import DECODERS, tiny_model, token_batch

pytestmark = pytest.mark.usefixtures("one_thread")
peft = pytest.importorskip("peft")

# (block path, linears targeted per block) of each family
ANATOMY = {
    "llama": ("model.layers", 7), "qwen2": ("model.layers", 7), "qwen3": ("model.layers", 7),
    "mistral": ("model.layers", 7), "gemma": ("model.layers", 7), "gemma2": ("model.layers", 7),
    "phi3": ("model.layers", 4), "gpt2": ("transformer.h", 4), "gpt_neox": ("gpt_neox.layers", 4),
    "opt": ("model.decoder.layers", 6),
}


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_family_end_to_end(kind, tmp_path):
    base = tiny_model(kind, head="lm", layers=4, seed=1)
    batch = token_batch(batch=3, seq=10, seed=2, labels=False)
    path, per_block = ANATOMY[kind]
    stack = find_blocks(base)
    assert (stack.path, len(stack)) == (path, 4)
    targets = target_linears(base, None)
    assert [len(targets[i]) for i in range(4)] == [per_block] * 4, default_target_modules(base)
    reference = _logits(base, batch)

    scores = profile_activations(base, [batch], progress=False)
    assert len(scores.scores) == 4 and all(s > 0 for s in scores.scores)
    assert torch.equal(_logits(base, batch), reference)  # profiling left the model as it was
    layers = select_layers(scores, fraction=0.5)
    assert len(layers) == 2

    model = apply_act_lora(copy.deepcopy(base), layers, r=4, alpha=8, verbose=False)
    assert len(lora_modules(model)) == 2 * per_block
    torch.testing.assert_close(_logits(model, batch), reference, atol=1e-5, rtol=1e-5)  # B = 0: the identity

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss_sum, count = token_loss_sum(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, labels)
    (loss_sum / count).backward()
    optimizer.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trained = _logits(model, batch)
    assert not torch.allclose(trained, reference, atol=1e-4)

    save_adapter(model, tmp_path / "adapter")
    plain = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
    assert not any(type(m).__name__ == "FusedLoraLinear" for m in plain.modules())  # PEFT's own layers
    torch.testing.assert_close(_logits(plain, batch), trained, atol=1e-5, rtol=1e-5)
