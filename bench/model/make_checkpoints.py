#!/usr/bin/env python3
"""Writes the benchmark checkpoints (random weights, fp16, never committed):

  OUT/modernbert  ModernBERT-base shape (149M): hidden 768, 22 layers,
                  intermediate 1152, 12 heads, vocab 50368, a global layer
                  every 3, local window 128, mean pooling, 113 labels
  OUT/qwen2       Qwen2.5-0.5B shape (494M): hidden 896, 24 layers,
                  intermediate 4864, 14 heads, 2 kv heads, vocab 151936,
                  tied embeddings, pad token 151643, 113 labels

transformers builds each model from its config with its own random
initialisation and writes it with save_pretrained, so both qtool and
transformers read the very same folder. Needs torch and transformers;
uses the GPU when there is one (faster initialisation).

  python3 bench/model/make_checkpoints.py --out /tmp/ckpt [--small]
"""
import argparse
import os
import sys

import torch
from transformers import (ModernBertConfig, ModernBertForSequenceClassification, Qwen2Config,
                          Qwen2ForSequenceClassification)

LABELS = 113


def modernbert_config(small):
    return ModernBertConfig(vocab_size=50368, hidden_size=64 if small else 768,
                            intermediate_size=96 if small else 1152, num_hidden_layers=4 if small else 22,
                            num_attention_heads=4 if small else 12, global_attn_every_n_layers=3,
                            local_attention=128, max_position_embeddings=8192, hidden_activation="gelu",
                            classifier_pooling="mean", pad_token_id=50283, bos_token_id=50281, eos_token_id=50282,
                            cls_token_id=50281, sep_token_id=50282, num_labels=LABELS)


def qwen2_config(small):
    return Qwen2Config(vocab_size=151936, hidden_size=64 if small else 896, intermediate_size=96 if small else 4864,
                       num_hidden_layers=3 if small else 24, num_attention_heads=14 if not small else 4,
                       num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, use_sliding_window=False, pad_token_id=151643,
                       bos_token_id=151643, eos_token_id=151643, num_labels=LABELS)


def build(cls, cfg, out, seed):
    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = cls(cfg)
    model = model.half().eval()
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters", flush=True)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="tiny versions (checks, not timings)")
    ap.add_argument("--only", choices=["modernbert", "qwen2"])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.only in (None, "modernbert"):
        build(ModernBertForSequenceClassification, modernbert_config(a.small), os.path.join(a.out, "modernbert"), 1)
    if a.only in (None, "qwen2"):
        build(Qwen2ForSequenceClassification, qwen2_config(a.small), os.path.join(a.out, "qwen2"), 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
