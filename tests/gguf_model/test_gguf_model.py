#!/usr/bin/env python3
"""Whole-model GGUF: `qtool quantize --plugin gguf_cpu --out FILE.gguf` and
`qtool eval --model FILE.gguf` on the tiny committed decoders (qwen2, sharded,
F32, a sliding-window layer; llama, F16, head_dim 24 != hidden/heads, biases
everywhere, llama3 RoPE scaling), with Q8_0 and Q4_K_M (hidden 64: the
k-types fall back per llama.cpp's rules).

Read back with the `gguf` package (GGUFReader), independently of qtool:
- tensor names and ggml dims against llama.cpp's (gguf.constants
  MODEL_TENSORS / TENSOR_NAMES), no `output.weight`, the types the mix rules
  give (a Python transcription of llama-quant.cpp's rules);
- the block bytes equal the plugin's own saved layers (`qtool quantize
  --out DIR`, safetensors) and, for the types the package quantizes (Q8_0,
  Q5_0), gguf.quants.quantize of the checkpoint's weights; llama's q/k rows
  permuted as convert_hf_to_gguf.py's LlamaModel.permute does; the
  dequantized weights are within the type's error of the float weights;
- embedding, norms, biases, head and rope_freqs against the checkpoint;
- every metadata key, named through gguf.constants.Keys, against config.json.
`qtool eval --model FILE.gguf` (no --plugin) gives bitwise the logits of
`qtool eval --model DIR --plugin gguf_cpu --opt type=T`.
A byte-level BPE tokenizer.json (trained here with `tokenizers`) becomes the
tokenizer.ggml.* keys. Errors: an encoder, a non-gguf plugin with a .gguf
output, an existing output, a truncated file, a foreign GGUF file, a key or a
tensor name that disagrees with the config.
llama.cpp: when a Python with llama_cpp is found ($QTOOL_PYTHON, or
$QTOOL_LLAMACPP_PYTHON), every file is loaded and its pooled last-token state
(F32 KV cache) compared with qtool's; otherwise that part prints why it is
skipped.

Env: QTOOL_BIN, QTOOL_PLUGIN_DIR, QTOOL_TEST_DATA."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file
    import gguf
    from gguf import GGUFReader
    from gguf.constants import Keys, MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES, LlamaFileType, GGMLQuantizationType
    import gguf.quants
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qtool_cli import DATA, failures, qtool, check  # noqa: E402
HERE = os.path.dirname(os.path.abspath(__file__))
# Plain lowercase words: GPT-2's and Qwen2's pre-tokenizer regexes split them alike.
TOK_TEXT = "hello world the quick brown fox"


def must(p, what):
    if p.returncode != 0:
        sys.exit(f"{what}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def model_dir(name):
    return os.path.join(DATA, name, "model")


def checkpoint(mdir):
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    out = {}
    for f in sorted(os.listdir(mdir)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(mdir, f)))
    return out


# ------------------------------------------------ independent references

ARCHS = {"qwen2": MODEL_ARCH.QWEN2, "llama": MODEL_ARCH.LLAMA}
SLOTS = [("attn_q", "self_attn.q_proj", "attn_v"), ("attn_k", "self_attn.k_proj", None),
         ("attn_v", "self_attn.v_proj", "attn_v"), ("attn_output", "self_attn.o_proj", None),
         ("ffn_gate", "mlp.gate_proj", None), ("ffn_up", "mlp.up_proj", None),
         ("ffn_down", "mlp.down_proj", "ffn_down")]
BASE = {"Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
        "Q4_K": "Q4_K", "Q5_K": "Q5_K", "Q6_K": "Q6_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K"}
FTYPE = {"Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M}


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(choice, gguf_name, block, n_blocks, K):
    """llama_tensor_get_type (src/llama-quant.cpp) for the tensors here."""
    t = BASE[choice]
    if choice == "Q4_K_M" and gguf_name in ("attn_v", "ffn_down") and use_more_bits(block, n_blocks):
        t = "Q6_K"
    if K % 256:
        t = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}.get(t, t)
    return t


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute (rows of q and k)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(cfg, head_dim):
    """convert_hf_to_gguf.py's rope_freqs for rope_type llama3."""
    rs = cfg["rope_scaling"]
    base = cfg.get("rope_theta", 10000.0)
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs.astype(np.float64):
        wl = 2 * np.pi / f
        if wl < old / hi:
            out.append(1.0)
        elif wl > old / lo:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


# ------------------------------------------------------ the file's content

def check_file(name, choice, path, saved_dir):
    mdir = model_dir(name)
    cfg_text = open(os.path.join(mdir, "config.json")).read()
    cfg = json.loads(cfg_text)
    ck = checkpoint(mdir)
    saved = checkpoint(saved_dir)
    r = GGUFReader(path)
    arch = gguf.constants.MODEL_ARCH_NAMES[ARCHS[name]]
    A = lambda k: k.format(arch=arch)
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    llama = name == "llama"
    tag = f"{name} {choice}"

    # metadata
    check(field(r, Keys.General.ARCHITECTURE) == arch, f"{tag}: general.architecture = {arch}")
    check(field(r, Keys.General.NAME) == "model", f"{tag}: general.name is the folder name")
    check(field(r, Keys.General.FILE_TYPE) == FTYPE[choice], f"{tag}: general.file_type = {int(FTYPE[choice])}")
    check(field(r, Keys.General.QUANTIZATION_VERSION) == 2, f"{tag}: general.quantization_version = 2")
    check(field(r, Keys.General.ALIGNMENT) == 32 and r.alignment == 32, f"{tag}: general.alignment = 32")
    want = {Keys.LLM.BLOCK_COUNT: L, Keys.LLM.CONTEXT_LENGTH: cfg["max_position_embeddings"],
            Keys.LLM.EMBEDDING_LENGTH: H, Keys.LLM.FEED_FORWARD_LENGTH: I, Keys.Attention.HEAD_COUNT: nh,
            Keys.Attention.HEAD_COUNT_KV: nkv, Keys.Rope.DIMENSION_COUNT: hd, Keys.LLM.VOCAB_SIZE: cfg["vocab_size"],
            Keys.LLM.POOLING_TYPE: int(gguf.constants.PoolingType.LAST)}
    if hd * nh != H:
        want[Keys.Attention.KEY_LENGTH] = hd
        want[Keys.Attention.VALUE_LENGTH] = hd
    for k, v in want.items():
        check(field(r, A(k)) == v, f"{tag}: {A(k)} = {v} (found {field(r, A(k))})")
    if hd * nh == H:
        check(A(Keys.Attention.KEY_LENGTH) not in r.fields, f"{tag}: no key_length when head_dim = hidden/heads")
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta")
    check(field(r, A(Keys.Rope.FREQ_BASE)) == np.float32(theta), f"{tag}: rope.freq_base = {theta}")
    check(field(r, A(Keys.Attention.LAYERNORM_RMS_EPS)) == np.float32(cfg["rms_norm_eps"]),
          f"{tag}: layer_norm_rms_epsilon = {cfg['rms_norm_eps']}")
    check(A(Keys.Rope.SCALING_TYPE) not in r.fields, f"{tag}: no rope.scaling.type (llama3 goes in rope_freqs)")
    labels = [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]
    check(field(r, A(Keys.Classifier.OUTPUT_LABELS)) == labels, f"{tag}: classifier.output_labels = id2label")
    check(field(r, Keys.Tokenizer.MODEL) == "none" and Keys.Tokenizer.LIST not in r.fields,
          f"{tag}: no tokenizer.json: tokenizer.ggml.model = none")
    check(field(r, "qtool.config_json") == cfg_text, f"{tag}: qtool.config_json is config.json verbatim")
    qc = json.loads(field(r, "qtool.quantization_config"))
    check(qc == {"quant_method": "gguf", "type": choice}, f"{tag}: qtool.quantization_config {qc}")
    check(field(r, "qtool.num_labels") == len(labels) and field(r, "qtool.pooling") == "last",
          f"{tag}: qtool.num_labels, qtool.pooling")
    head = np.array(field(r, "qtool.classifier.weight"), dtype=np.float32)
    check(np.array_equal(head, ck["score.weight"].astype(np.float32).ravel()),
          f"{tag}: qtool.classifier.weight = score.weight in F32")
    pad = cfg.get("pad_token_id")
    check(field(r, "qtool.pad_token_id") == pad, f"{tag}: qtool.pad_token_id = {pad}")

    # tensors
    tensors = {t.name: t for t in r.tensors}
    known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[ARCHS[name]]}
    bias_of = {"attn_q": cfg.get("attention_bias", name == "qwen2"), "attn_k": cfg.get("attention_bias", name == "qwen2"),
               "attn_v": cfg.get("attention_bias", name == "qwen2"), "attn_output": cfg.get("attention_bias", False),
               "ffn_gate": cfg.get("mlp_bias", False), "ffn_up": cfg.get("mlp_bias", False),
               "ffn_down": cfg.get("mlp_bias", False)}
    expect = {"token_embd.weight", "output_norm.weight"}
    if llama:
        expect.add("rope_freqs.weight")
    for i in range(L):
        expect |= {f"blk.{i}.attn_norm.weight", f"blk.{i}.ffn_norm.weight"}
        for g, _, _ in SLOTS:
            expect.add(f"blk.{i}.{g}.weight")
            if bias_of[g]:
                expect.add(f"blk.{i}.{g}.bias")
    check(set(tensors) == expect, f"{tag}: tensor names {sorted(set(tensors) ^ expect) or 'as expected'}")
    check(all(n.rsplit(".", 1)[0].replace(n.split(".")[1], "{bid}", 1) in known if n.startswith("blk.")
              else n.rsplit(".", 1)[0] in known for n in tensors), f"{tag}: every name is one of llama.cpp's for {arch}")
    check("output.weight" not in tensors, f"{tag}: no output.weight (llama.cpp ties it to token_embd)")

    emb = tensors["token_embd.weight"]
    dt = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[ck["model.embed_tokens.weight"].dtype]
    check(emb.tensor_type.name == dt and list(emb.shape) == [H, cfg["vocab_size"]] and
          np.array_equal(emb.data, ck["model.embed_tokens.weight"]),
          f"{tag}: token_embd {dt} [{H}, {cfg['vocab_size']}] = the checkpoint's embedding")
    if llama:
        rf = tensors["rope_freqs.weight"]
        ref = llama3_factors(cfg, hd)
        check(rf.tensor_type.name == "F32" and np.allclose(rf.data, ref, rtol=1e-6, atol=0),
              f"{tag}: rope_freqs = convert_hf_to_gguf's llama3 factors {np.round(ref, 3).tolist()}")

    def norm_ok(gname, hname):
        t = tensors[gname]
        return t.tensor_type.name == "F32" and list(t.shape) == [H] and np.array_equal(t.data, ck[hname].astype(np.float32))

    ok_norms = norm_ok("output_norm.weight", "model.norm.weight")
    counts = {}
    for i in range(L):
        ok_norms &= norm_ok(f"blk.{i}.attn_norm.weight", f"model.layers.{i}.input_layernorm.weight")
        ok_norms &= norm_ok(f"blk.{i}.ffn_norm.weight", f"model.layers.{i}.post_attention_layernorm.weight")
        for g, hf, _ in SLOTS:
            t = tensors[f"blk.{i}.{g}.weight"]
            w = ck[f"model.layers.{i}.{hf}.weight"].astype(np.float32)
            N, K = w.shape
            ty = expected_type(choice, g, i, L, K)
            counts[ty] = counts.get(ty, 0) + 1
            check(t.tensor_type.name == ty and list(t.shape) == [K, N],
                  f"{tag}: blk.{i}.{g}.weight {t.tensor_type.name} {list(map(int, t.shape))}, expected {ty} [{K}, {N}]")
            perm = (lambda x: permute(x, nh, nh)) if llama and g == "attn_q" else \
                   (lambda x: permute(x, nh, nkv)) if llama and g == "attn_k" else (lambda x: x)
            mine = saved[f"model.layers.{i}.{hf}.weight"]  # the plugin's own save, [N, row bytes]
            check(np.array_equal(np.asarray(t.data).reshape(N, -1), perm(mine)),
                  f"{tag}: blk.{i}.{g}.weight bytes = the plugin's saved layer{' (rows permuted)' if perm(w) is not w else ''}")
            qt = GGMLQuantizationType[ty]
            if ty in ("Q8_0", "Q5_0"):
                ref = gguf.quants.quantize(perm(w), qt)
                check(np.array_equal(np.asarray(t.data).reshape(N, -1), ref),
                      f"{tag}: blk.{i}.{g}.weight bytes = gguf.quants.quantize({ty})")
            deq = gguf.quants.dequantize(np.asarray(t.data), qt).reshape(N, K)
            rel = float(np.sqrt(((deq - perm(w)) ** 2).mean() / (w ** 2).mean()))
            check(rel < {"Q8_0": 0.02, "Q5_0": 0.1}.get(ty, 0.2),
                  f"{tag}: blk.{i}.{g}.weight dequantized within {ty}'s error of the weight (rel RMS {rel:.4f})")
            if bias_of[g]:
                b = tensors[f"blk.{i}.{g}.bias"]
                ref = perm(ck[f"model.layers.{i}.{hf}.bias"].astype(np.float32))
                check(b.tensor_type.name == "F32" and list(b.shape) == [N] and np.array_equal(b.data, ref),
                      f"{tag}: blk.{i}.{g}.bias F32 = the checkpoint's bias{' (permuted)' if llama and g in ('attn_q', 'attn_k') else ''}")
    check(ok_norms, f"{tag}: norms F32 = the checkpoint's")
    print(f"     {tag}: block types {counts}")


def logits(path):
    return load_file(path)["logits"]


# ---------------------------------------------------------------- llama.cpp

def llamacpp_python():
    cands = [os.environ.get("QTOOL_PYTHON", sys.executable), os.environ.get("QTOOL_LLAMACPP_PYTHON")]
    for py in cands:
        if py and subprocess.run([py, "-c", "import llama_cpp, numpy"], capture_output=True).returncode == 0:
            return py
    return None


def main():
    tmp = tempfile.mkdtemp(prefix="qtool-ggufm-")
    runs = []  # for llama.cpp: (gguf file, short data, qtool's pooled states)
    for name in ("qwen2", "llama"):
        mdir = model_dir(name)
        data = os.path.join(DATA, name, "data.jsonl")
        # Short sequences (<= 6 tokens: inside qwen2's sliding window) and the full ones.
        short = os.path.join(tmp, f"{name}_short.jsonl")
        with open(data) as fi, open(short, "w") as fo:
            for line in fi:
                ex = json.loads(line)
                fo.write(json.dumps({"input_ids": ex["input_ids"][:6], "label": ex["label"]}) + "\n")
        for choice in ("Q8_0", "Q4_K_M"):
            tag = f"{name} {choice}"
            out = os.path.join(tmp, f"{name}_{choice}.gguf")
            p = must(qtool("quantize", "--plugin", "gguf_cpu", "--model", mdir, "--opt", f"type={choice}", "--out", out),
                     f"{tag}: quantize to GGUF")
            check("gguf: classification head" in p.stdout and "qtool.classifier.weight" in p.stdout and
                  "llama.cpp does not use it" in p.stdout, f"{tag}: the report says where the head went")
            if name == "qwen2":
                check("sliding window of 6 tokens" in p.stdout, f"{tag}: the report names the sliding window")
            folder = os.path.join(tmp, f"{name}_{choice}_st")
            p = must(qtool("quantize", "--plugin", "gguf_cpu", "--model", mdir, "--opt", f"type={choice}", "--out", folder),
                     f"{tag}: quantize to a folder")
            check("does not end in .gguf: writing a safetensors checkpoint folder" in p.stderr and
                  os.path.isfile(os.path.join(folder, "model.safetensors")),
                  f"{tag}: --out without .gguf writes a safetensors folder and says so")
            check_file(name, choice, out, folder)

            a, b = (os.path.join(tmp, f"{x}.safetensors") for x in "ab")
            must(qtool("eval", "--model", out, "--data", data, "--logits-out", a), f"{tag}: eval the GGUF file")
            must(qtool("eval", "--model", mdir, "--plugin", "gguf_cpu", "--opt", f"type={choice}", "--data", data,
                       "--logits-out", b), f"{tag}: eval the checkpoint with gguf_cpu")
            la, lb = logits(a), logits(b)
            check(la.shape == lb.shape and np.array_equal(la, lb),
                  f"{tag}: eval --model FILE.gguf = eval --model DIR --plugin gguf_cpu, bitwise ({la.shape})")
            hs, hl = os.path.join(tmp, f"{name}_{choice}_short.npy"), os.path.join(tmp, f"{name}_{choice}_long.npy")
            for d, npy in ((short, hs), (data, hl)):
                hid = os.path.join(tmp, "h.safetensors")
                must(qtool("eval", "--model", out, "--data", d, "--hidden-out", hid), f"{tag}: pooled states")
                np.save(npy, load_file(hid)["pooled"])
            runs.append((out, short, hs, data, hl, name))

    # A byte-level BPE tokenizer.json beside the model.
    tok_dir = os.path.join(tmp, "qwen2_tok")
    shutil.copytree(model_dir("qwen2"), tok_dir)
    tok_file, tok_ids = None, None
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    except ImportError as e:
        print(f"skip tokenizer part: {e}")
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        texts = ["the quick brown fox jumps over the lazy dog", "a tokenizer for a tiny test model",
                 "quantization keeps the classifier accurate", "hello world, hello tokens"] * 50
        tok.train_from_iterator(texts, trainer)
        tok.add_tokens(["<tool_call>"])
        tok.save(os.path.join(tok_dir, "tokenizer.json"))
        cfg = json.load(open(os.path.join(tok_dir, "config.json")))
        cfg["eos_token_id"] = tok.token_to_id("<|im_end|>")
        cfg["bos_token_id"] = tok.token_to_id("<|endoftext|>")
        json.dump(cfg, open(os.path.join(tok_dir, "config.json"), "w"), indent=2)
        json.dump({"add_bos_token": False, "chat_template": "{{ messages }}"},
                  open(os.path.join(tok_dir, "tokenizer_config.json"), "w"))
        tok_file = os.path.join(tmp, "qwen2_tok.gguf")
        p = must(qtool("quantize", "--plugin", "gguf_cpu", "--model", tok_dir, "--opt", "type=Q8_0", "--out", tok_file),
                 "quantize with a tokenizer")
        r = GGUFReader(tok_file)
        tj = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
        V = cfg["vocab_size"]
        ids = {i: s for s, i in tj["model"]["vocab"].items()}
        added = {a["id"]: a for a in tj["added_tokens"]}
        ids.update({i: a["content"] for i, a in added.items()})
        want_tokens = [ids.get(i, f"[PAD{i}]") for i in range(V)]
        want_types = [(3 if added[i]["special"] else 4) if i in added else 1 if i in ids else 5 for i in range(V)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        check(field(r, Keys.Tokenizer.MODEL) == "gpt2" and field(r, Keys.Tokenizer.PRE) == "qwen2",
              "tokenizer: tokenizer.ggml.model = gpt2, pre = qwen2")
        check(field(r, Keys.Tokenizer.LIST) == want_tokens, f"tokenizer: {V} tokens by id, [PADn] beyond the tokenizer")
        check(field(r, Keys.Tokenizer.TOKEN_TYPE) == want_types, "tokenizer: token types (control, user-defined, unused)")
        check(field(r, Keys.Tokenizer.MERGES) == merges, f"tokenizer: {len(merges)} merges as \"a b\"")
        check(field(r, Keys.Tokenizer.EOS_ID) == cfg["eos_token_id"] and field(r, Keys.Tokenizer.BOS_ID) == cfg["bos_token_id"]
              and field(r, Keys.Tokenizer.PAD_ID) == cfg["pad_token_id"], "tokenizer: bos/eos/padding ids from config.json")
        check(field(r, Keys.Tokenizer.ADD_BOS) is False and field(r, Keys.Tokenizer.CHAT_TEMPLATE) == "{{ messages }}",
              "tokenizer: add_bos_token and chat_template from tokenizer_config.json")
        check("tokenizer: gpt2 (byte-level BPE)" in p.stdout, "tokenizer: the report says so")
        tok_ids = tok.encode(TOK_TEXT).ids

    # ------------------------------------------------------------ errors
    bad = os.path.join(tmp, "bad.gguf")
    p = qtool("quantize", "--plugin", "gguf_cpu", "--model", model_dir("bert"), "--out", bad)
    check(p.returncode == 1 and "encoder" in p.stderr and "Qwen2, Llama" in p.stderr and p.stderr.count("\n") == 1
          and not os.path.exists(bad), f"encoder: exit 1, one line: {p.stderr.strip()}")
    p = qtool("quantize", "--plugin", "fp16", "--model", model_dir("qwen2"), "--out", bad)
    check(p.returncode == 2 and "use --plugin gguf_cpu" in p.stderr and not os.path.exists(bad),
          f"fp16 into .gguf: exit 2: {p.stderr.strip()}")
    existing = os.path.join(tmp, "qwen2_Q8_0.gguf")
    p = qtool("quantize", "--plugin", "gguf_cpu", "--model", model_dir("qwen2"), "--out", existing)
    check(p.returncode == 2 and "exists (pass --force" in p.stderr, f"existing output: exit 2: {p.stderr.strip()}")
    p = qtool("quantize", "--plugin", "gguf_cpu", "--model", model_dir("qwen2"), "--out", existing, "--force",
              "--opt", "type=Q8_0")
    check(p.returncode == 0, "existing output with --force: replaced")
    os.makedirs(os.path.join(tmp, "folder.gguf"))
    p = qtool("quantize", "--plugin", "gguf_cpu", "--model", model_dir("qwen2"), "--out", os.path.join(tmp, "folder.gguf"))
    check(p.returncode == 2 and "is a folder" in p.stderr, f"a folder named .gguf: exit 2: {p.stderr.strip()}")
    p = qtool("quantize", "--plugin", "gguf_cpu", "--model", existing, "--out", bad)
    check(p.returncode == 1 and "already quantized" in p.stderr, f"quantizing a GGUF file: {p.stderr.strip()}")
    data = os.path.join(DATA, "qwen2", "data.jsonl")
    p = qtool("eval", "--model", existing, "--plugin", "fp16", "--data", data)
    check(p.returncode == 1 and "gguf_cpu" in p.stderr, f"eval with another plugin: {p.stderr.strip()}")

    blob = open(existing, "rb").read()
    trunc = os.path.join(tmp, "trunc.gguf")
    open(trunc, "wb").write(blob[: len(blob) - 100])
    p = qtool("eval", "--model", trunc, "--data", data)
    check(p.returncode == 1 and "trunc.gguf" in p.stderr and p.stderr.count("\n") == 1,
          f"truncated file: one line naming it: {p.stderr.strip()}")

    foreign = os.path.join(tmp, "foreign.gguf")
    w = gguf.GGUFWriter(foreign, "qwen2")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((500, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = qtool("eval", "--model", foreign, "--data", data)
    check(p.returncode == 1 and "not other GGUF files" in p.stderr, f"a GGUF file from elsewhere: {p.stderr.strip()}")

    r = GGUFReader(existing)
    f = r.fields["qwen2.block_count"]
    off = f.offset + sum(len(part.tobytes()) for part in f.parts[:-1])
    patched = bytearray(blob)
    patched[off:off + 4] = (3).to_bytes(4, "little")
    pk = os.path.join(tmp, "patched_key.gguf")
    open(pk, "wb").write(patched)
    p = qtool("eval", "--model", pk, "--data", data)
    check(p.returncode == 1 and "qwen2.block_count is 3 but the file's config says 2" in p.stderr,
          f"a llama.cpp key that disagrees with the config: {p.stderr.strip()}")
    i = blob.index(b"blk.1.ffn_up.weight")
    patched = bytearray(blob)
    patched[i:i + len(b"blk.1.ffn_up.weight")] = b"blk.1.ffn_xx.weight"
    pt = os.path.join(tmp, "patched_tensor.gguf")
    open(pt, "wb").write(patched)
    p = qtool("eval", "--model", pt, "--data", data)
    check(p.returncode == 1 and "tensor 'blk.1.ffn_up.weight' is missing" in p.stderr,
          f"a tensor renamed: {p.stderr.strip()}")

    # --------------------------------------------------------- llama.cpp
    py = llamacpp_python()
    if not py:
        print("skip llama.cpp part: no Python with llama_cpp ($QTOOL_PYTHON, $QTOOL_LLAMACPP_PYTHON)")
    else:
        job = {"runs": runs, "tokenizer": tok_file, "text": TOK_TEXT, "ids": tok_ids}
        jf = os.path.join(tmp, "llamacpp.json")
        json.dump(job, open(jf, "w"))
        p = subprocess.run([py, os.path.join(HERE, "llamacpp_check.py"), jf], capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith(("ok   ", "FAIL ", "     ")):
                print(line)
            if line.startswith("FAIL "):
                failures.append(line[5:])
        check(p.returncode == 0, f"llama.cpp checks ran ({py}){'' if p.returncode == 0 else ': ' + p.stderr[-2000:]}")

    shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("all ok")


if __name__ == "__main__":
    main()
