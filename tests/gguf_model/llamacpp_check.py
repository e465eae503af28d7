#!/usr/bin/env python3
"""The llama.cpp half of test_gguf_model.py, run with a Python that has
llama_cpp (llama-cpp-python) and numpy; argv[1] is a JSON job file.

Each exported file must load in llama.cpp (vocab_only=False). Its pooled
state (embeddings on, pooling last = the file's default, F32 KV cache so
that only the deliberate activation quantization differs) must match qtool's
pooled state, the vector the classification head multiplies, on sequences of
at most 6 tokens, measured per sequence relative to its largest value: the
median within 1e-5 (float summation order only) and every sequence within
1e-2 (an activation that rounds to the neighbouring Q8 code in one program
and not the other moves a sequence by up to a few 1e-3). On the full-length
data the qwen2 model must differ by far more (median above 1e-2: qtool
applies its sliding window of 6 tokens, llama.cpp's qwen2 does not), which
shows the comparison can tell. A file with a tokenizer must tokenize plain text as the
`tokenizers` package did."""
import json
import sys

import numpy as np
import llama_cpp

MEDIAN_TOL, MAX_TOL = 1e-5, 1e-2
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    failures += not cond


def pooled(m, path):
    out = []
    for line in open(path):
        ids = json.loads(line)["input_ids"]
        m._ctx.kv_cache_clear()
        m._batch.reset()
        m._batch.add_sequence(ids, 0, False)
        m._ctx.decode(m._batch)
        ptr = llama_cpp.llama_get_embeddings_seq(m._ctx.ctx, 0)
        out.append(np.ctypeslib.as_array(ptr, shape=(m.n_embd(),)).copy())
    return np.array(out)


def rel_err(a, b):
    e = np.abs(a - b).max(1) / np.abs(b).max(1)
    print(f"     rel err per sequence: median {np.median(e):.1e}, 90% {np.quantile(e, 0.9):.1e}, max {e.max():.1e}")
    return e


def main():
    job = json.load(open(sys.argv[1]))
    print(f"     llama-cpp-python {llama_cpp.__version__}")
    f32 = int(llama_cpp.GGML_TYPE_F32)
    for gguf_file, short, short_ref, full, full_ref, name in job["runs"]:
        try:
            m = llama_cpp.Llama(model_path=gguf_file, vocab_only=False, n_ctx=128, n_batch=128, embedding=True,
                                type_k=f32, type_v=f32, flash_attn=False, verbose=False)
        except Exception as e:  # noqa: BLE001 - any load failure is the finding
            check(False, f"llama.cpp loads {gguf_file}: {e}")
            continue
        check(True, f"llama.cpp loads {gguf_file}")
        e = rel_err(pooled(m, short), np.load(short_ref))
        check(np.median(e) <= MEDIAN_TOL and e.max() <= MAX_TOL,
              f"{gguf_file}: llama.cpp's pooled state = qtool's on <= 6 tokens")
        e = rel_err(pooled(m, full), np.load(full_ref))
        if name == "qwen2":
            check(np.median(e) > 1e-2, f"{gguf_file}: on longer sequences qwen2 differs (sliding window)")
        else:
            check(np.median(e) <= MEDIAN_TOL and e.max() <= MAX_TOL, f"{gguf_file}: and on the full sequences")
        m.close() if hasattr(m, "close") else None
    if job.get("tokenizer"):
        m = llama_cpp.Llama(model_path=job["tokenizer"], vocab_only=True, verbose=False)
        ids = m.tokenize(job["text"].encode(), add_bos=False, special=False)
        check(ids == job["ids"], f"llama.cpp tokenizes {job['text']!r} as tokenizers does: {ids}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
