"""Evaluation data given as text: qtool tokenizes it with the model folder's
tokenizer.json and must see exactly the ids the `tokenizers` package gives
(same logits as the pre-tokenized file), truncation included."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

QTOOL = os.environ["QTOOL_BIN"]
SRC = os.path.join(os.environ["QTOOL_TEST_DATA"], "model", "data", "bert", "model")

TEXTS = [
    "The card was charged twice for one purchase.",
    "Why is there a late fee on my mortgage statement?",
    "Café déjà vu: naïve façade, CJK 汉字 and emoji 🙂 too",
    "short",
    "A much longer complaint about a bank account that keeps going on and on, with numbers 12345 "
    "and punctuation!!! so that truncation to a small maximum length really has to happen here.",
    "   whitespace\truns\r\nand CRLF   ",
]


def run(*args, expect=0):
    p = subprocess.run([QTOOL, *args], capture_output=True, text=True)
    if p.returncode != expect:
        sys.exit(f"qtool {' '.join(args)}: exit {p.returncode}, expected {expect}\n{p.stdout}\n{p.stderr}")
    return p


def main():
    tmp = tempfile.mkdtemp(prefix="qtool-text-")
    model = os.path.join(tmp, "bert")
    shutil.copytree(SRC, model)
    cfg = json.load(open(os.path.join(model, "config.json")))

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=cfg["vocab_size"] - 10,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(TEXTS * 20, trainer)
    assert tok.get_vocab_size() <= cfg["vocab_size"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(os.path.join(model, "tokenizer.json"))

    full_len = [len(tok.encode(t).ids) for t in TEXTS]
    for max_len in (None, 12):
        text_file = os.path.join(tmp, "text.jsonl")
        ids_file = os.path.join(tmp, "ids.jsonl")
        if max_len:
            tok.enable_truncation(max_length=max_len)
        with open(text_file, "w") as ft, open(ids_file, "w") as fi:
            for i, t in enumerate(TEXTS):
                ft.write(json.dumps({"text": t, "label": i % 7}) + "\n")
                fi.write(json.dumps({"input_ids": tok.encode(t).ids, "label": i % 7}) + "\n")
        extra = ["--max-length", str(max_len)] if max_len else []
        a, b = os.path.join(tmp, "a.safetensors"), os.path.join(tmp, "b.safetensors")
        pt = run("eval", "--model", model, "--plugin", "fp16", "--data", text_file, "--logits-out", a, *extra)
        run("eval", "--model", model, "--plugin", "fp16", "--data", ids_file, "--logits-out", b, *extra)
        la, lb = load_file(a)["logits"], load_file(b)["logits"]
        assert np.array_equal(la, lb), (max_len, np.abs(la - lb).max())
        if max_len:
            n_trunc = sum(n > max_len for n in full_len)
            assert n_trunc > 0
            assert f"{n_trunc} of {len(TEXTS)} examples truncated to {max_len} tokens" in pt.stderr, pt.stderr
        print(f"max_length {max_len}: text and ids agree on {len(TEXTS)} examples")

    # Without a tokenizer, text data is an error naming the line.
    os.remove(os.path.join(model, "tokenizer.json"))
    p = run("eval", "--model", model, "--plugin", "fp16", "--data", text_file, expect=1)
    assert ":1:" in p.stderr and "tokenizer" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    print("ok")


main()
