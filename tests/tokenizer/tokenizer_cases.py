"""Tokenizers and text for checking qtool's tokenizer against the `tokenizers`
library. Everything is generated from fixed seeds, so two runs build the same
files: small tokenizers trained on a synthetic corpus with the component
layouts of real models (Qwen2, Llama 3, GPT-2, RoBERTa, ModernBERT, BERT and a
few others), and a corpus of awkward text (Unicode, emoji, CJK, whitespace
runs, CRLF, contractions, long digit runs and words, combining accents, empty
strings, added tokens in the middle)."""

import json
import os
import random

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

FRAGMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right, it's what we'd do; they've said we'll see.",
    "IT'S LOUD: WE'LL GO, THEY'VE LEFT, YOU'RE LATE, I'M HERE, HE'D KNOW, DON'T 'S 'LL 'Re",
    "Numbers: 12345678901234567890 3.14159 1,000,000 2024-01-05 007 42nd",
    "Café naïve résumé coöperate façade jalapeño über Ångström",
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 n\u0303 A\u030a \u1100\u1161\u11a8 \u1112\u1161\u11ab",
    "\ufb01nance \ufb02ow \u2163 \u2460\u2461 \uff21\uff22\uff23\uff11\uff12\uff13 \u00bd \u00b2",
    "\u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 \u03c3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2 \u0130stanbul \u0131I Stra\u00dfe",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0415\u0451\u0436",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u30ab\u30bf\u30ab\u30ca\u3002",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4e2d\u6587\u6d4b\u8bd5\u3002\u6c49\u5b57\u5f88\u591a",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    "Emoji \U0001F600 \U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7 \u2764\ufe0f \U0001F970",
    "a  b   c    d",
    "\t\tindented\ttabs\t",
    "line1\r\nline2\r\n\r\nline4\rcr",
    "trailing   ",
    "   leading",
    "\n\n\nnewlines\n",
    "nbsp\u00a0here ideographic\u3000space line\u2028sep nel\u0085x \x0b\x0c",
    "nul\x00byte bell\x07 bom\ufeffx soft\u00adhyphen zero\u200bwidth repl\ufffdchar",
    "Hello, world! (test) [x] {y} <z> \"quoted\" 'single' \u2014 dash \u2013 \u2026 \u00abq\u00bb \u00bfQu\u00e9? \u00a1Hola!",
    "$100 + 50% = ^_^ ~tilde~ `code` |pipe| @user #tag &amp; a/b\\c",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "def f(x):\n    return x**2  # comment\n",
    "snake_case_name CamelCaseName ALLCAPS mixedCASE123abc",
    "don't won't can't shouldn't y'all o'clock rock'n'roll",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'Ll 'rE it'\u017f (long s folds to s)",
    "x" * 40 + " " + "ab" * 60,
]

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other old "
         "right big high different small large next early young important few public bad same able").split()

# Characters by script, for random strings (all assigned long ago, so every
# Unicode version involved agrees on their properties).
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "0123456789\u0660\u0661\u0662\u0966\u0967\uff10\uff11",
    " \t\n\r\u00a0\u3000\u2009",
    ".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=|~`",
    "\u00e0\u00e9\u00ee\u00f5\u00fc\u00c7\u00d1\u00df\u00f8\u00e6\u0153\u0142\u0107\u017e",
    "\u0300\u0301\u0302\u0303\u0308\u0327\u0328",
    "\u4e00\u4e8c\u4e09\u4eba\u5927\u5c0f\u5c71\u6c34\u706b\u6728\u91d1\u571f\u65e5\u6708",
    "\u3042\u3044\u3046\u3048\u304a\u30a2\u30a4\u30a6\u30a8\u30aa",
    "\uac00\ub098\ub2e4\ub77c\ub9c8\ubc14\uc0ac",
    "\u0627\u0628\u062a\u062b\u062c\u062d\u062e",
    "\u0915\u0916\u0917\u093e\u093f\u0940\u094d",
    "\u03b1\u03b2\u03b3\u03b4\u0391\u0392\u0393\u03c2\u03a3",
    "\u0430\u0431\u0432\u0433\u0414\u0415\u0416",
    "\U0001F600\U0001F601\U0001F602\U0001F44D\U0001F3FD\u2764\ufe0f\u200d\U0001F680",
]


def random_text(rng, n_chars):
    out = []
    while len(out) < n_chars:
        pool = rng.choice(POOLS)
        run = rng.randint(1, 8)
        out.extend(rng.choice(pool) for _ in range(run))
    return "".join(out)


def sentence(rng):
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.45:
            parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))))
        elif r < 0.75:
            parts.append(rng.choice(FRAGMENTS))
        elif r < 0.85:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 25))))
        else:
            parts.append(random_text(rng, rng.randint(1, 30)))
    sep = rng.choice([" ", "  ", "\n", "\t", ", ", "\r\n", ""])
    return sep.join(parts)


def training_corpus(seed=1234, n=1500):
    rng = random.Random(seed)
    lines = list(FRAGMENTS) * 3
    lines += [sentence(rng) for _ in range(n)]
    return lines


def test_corpus(specials, seed=4321, n=250):
    """Lines to encode: the fragments, special cases, then random mixes with
    added tokens dropped in the middle."""
    rng = random.Random(seed)
    lines = list(FRAGMENTS)
    lines += ["", " ", "  ", "\n", "\r\n", "\t", "a", "A", "'", "'s", "1", "\u00e9", "e\u0301", "\U0001F600"]
    lines += ["a" * 3000, "supercalifragilistic" * 40, "9" * 500, "\u4e2d" * 300, "\u00e9" * 150,
              "x" + " " * 200 + "y", "\n" * 50, random_text(rng, 2000)]
    for tok in specials:
        lines += [tok, f"{tok}{tok}", f"before{tok}after", f"before {tok} after", f"  {tok}  ",
                  f"{tok.lower()} {tok.upper()}", f"x{tok}\n{tok}y"]
    for _ in range(n):
        s = sentence(rng)
        if specials and rng.random() < 0.4:
            pos = rng.randint(0, len(s))
            glue = rng.choice(["", " ", "  ", "\n"])
            s = s[:pos] + glue + rng.choice(specials) + glue + s[pos:]
        lines.append(s)
    return lines


def _bytelevel_bpe(vocab_size, special_tokens, pre_tokenizer, normalizer=None, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer)
    return tok


def build_qwen2():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _bytelevel_bpe(1500, specials, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizer=normalizers.NFC())
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens([AddedToken("<tool_call>", normalized=False, special=False),
                    AddedToken("</tool_call>", normalized=False, special=False),
                    AddedToken("Caf\u00e9!", normalized=True, special=False)])
    return tok, specials + ["<tool_call>", "</tool_call>", "Caf\u00e9!", "Cafe\u0301!"]


def build_llama3():
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(12)]
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] + reserved
    tok = _bytelevel_bpe(1800, specials, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        ignore_merges=True)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok, specials[:4] + ["<|reserved_special_token_1|>", "<|reserved_special_token_11|>"]


def build_gpt2():
    specials = ["<|endoftext|>"]
    tok = _bytelevel_bpe(1200, specials, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok, specials


def build_roberta():
    specials = ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True, normalized=False)]
    tok = _bytelevel_bpe(1200, specials, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return tok, ["<s>", "</s>", "<mask>", "<pad>"]


def build_modernbert():
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]",
                AddedToken("[MASK]", lstrip=True, rstrip=False, special=True, normalized=False)]
    tok = _bytelevel_bpe(1200, specials, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                         normalizer=normalizers.NFC())
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.add_tokens([AddedToken("|||IP_ADDRESS|||", single_word=True, normalized=True, special=False),
                    AddedToken("  ", rstrip=True, normalized=False, special=False)])
    return tok, ["[CLS]", "[SEP]", "[MASK]", "|||IP_ADDRESS|||"]


def train_subword(words, n_merges, prefix, suffix, limit_alphabet):
    """A small deterministic BPE trainer (the library's trainers break ties
    in hash-map order, so their WordPiece and prefix/suffix BPE vocabularies
    change from run to run). Symbols after the first carry `prefix`, the last
    carries `suffix`, as the BPE model spells them. Returns (tokens, merges)
    in order."""
    import heapq
    from collections import Counter, defaultdict

    counts = Counter(w for w in words if w)
    chars = Counter()
    for w, c in counts.items():
        for ch in w:
            chars[ch] += c
    keep = set(sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit_alphabet])

    def symbols(w):
        out = []
        for i, ch in enumerate(w):
            t = ch if i == 0 else prefix + ch
            out.append(t + suffix if i == len(w) - 1 else t)
        return out

    seqs, freqs = [], []
    for w in sorted(counts):
        if all(ch in keep for ch in w):
            seqs.append(symbols(w))
            freqs.append(counts[w])
    tokens = sorted({t for s in seqs for t in s})
    known = set(tokens)
    pair_count = Counter()
    where = defaultdict(set)
    for k, s in enumerate(seqs):
        for p in zip(s, s[1:]):
            pair_count[p] += freqs[k]
            where[p].add(k)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < n_merges:
        c, p = heapq.heappop(heap)
        if -c != pair_count.get(p, 0) or -c < 2:
            continue
        a, b = p
        new = a + b[len(prefix):]
        merges.append(p)
        if new not in known:
            known.add(new)
            tokens.append(new)
        for k in sorted(where.pop(p, ())):
            s, f = seqs[k], freqs[k]
            for q in zip(s, s[1:]):
                pair_count[q] -= f
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
            for q in zip(out, out[1:]):
                pair_count[q] += f
                where[q].add(k)
            for q in set(zip(s, s[1:])) | set(zip(out, out[1:])):
                if pair_count[q] > 0:
                    heapq.heappush(heap, (-pair_count[q], q))
        pair_count.pop(p, None)
    return tokens, merges


def _words(normalizer, pre_tokenizer):
    words = []
    for line in training_corpus():
        text = normalizer.normalize_str(line) if normalizer is not None else line
        words.extend(w for w, _ in pre_tokenizer.pre_tokenize_str(text))
    return words


def _wordpiece(normalizer, post, max_chars=100, n_merges=1500):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pre = pre_tokenizers.BertPreTokenizer()
    tokens, _ = train_subword(_words(normalizer, pre), n_merges, "##", "", 300)
    vocab = {t: i for i, t in enumerate(specials + [t for t in tokens if t not in specials])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=max_chars))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    tok.post_processor = post(tok)
    return tok


def _bert_template(tok):
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])


def build_bert_uncased():
    tok = _wordpiece(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True), _bert_template)
    tok.add_tokens([AddedToken("NewToken", normalized=True, special=False),
                    AddedToken("[MASK]", normalized=False, special=True, single_word=True)])
    return tok, ["[CLS]", "[SEP]", "[MASK]", "[mask]", "NewToken", "NEWTOKEN", "[PAD]"]


def build_bert_cased():
    tok = _wordpiece(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=False),
                     lambda t: processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")),
                                                         ("[CLS]", t.token_to_id("[CLS]"))), max_chars=20)
    return tok, ["[CLS]", "[SEP]", "[MASK]", "[UNK]"]


def build_bert_strip():
    tok = _wordpiece(normalizers.Sequence([
        normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False),
        normalizers.Strip()]), _bert_template)
    return tok, ["[CLS]", "[SEP]"]


def build_bpe_subword():
    """Classic BPE with a continuing-subword prefix, an end-of-word suffix,
    an unknown token and non-byte-level pre-tokenizers."""
    specials = ["[UNK]", "[CLS]", "[SEP]"]
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.Punctuation(behavior="isolated")])
    tokens, merges = train_subword(_words(normalizer, pre), 1200, "##", "</w>", 150)
    vocab = {t: i for i, t in enumerate(specials + tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="[UNK]", continuing_subword_prefix="##",
                               end_of_word_suffix="</w>", fuse_unk=True))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.add_special_tokens(specials)
    tok.post_processor = _bert_template(tok)
    return tok, ["[CLS]", "[SEP]", "[UNK]"]


def build_split_behaviors():
    """Split with every behaviour, invert, a String pattern, and \\w/\\s."""
    specials = ["<|endoftext|>"]
    tok = _bytelevel_bpe(900, specials, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_previous"),
        pre_tokenizers.Split("-", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\d"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[\w\u0301]+"), behavior="isolated", invert=True),
        pre_tokenizers.Split(Regex(r"(?i)[aeiou]{2}|x"), behavior="removed"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]), normalizer=normalizers.NFKD())
    return tok, specials


def build_byte_fallback():
    """Sentencepiece-style BPE (Llama 2 layout): Prepend/Replace normalizers,
    no pre-tokenizer, byte_fallback and fused unknowns."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  limit_alphabet=60, max_token_length=8)
    corpus = [line.replace(" ", "\u2581") for line in training_corpus()]
    tok.train_from_iterator(corpus, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        name = f"<0x{b:02X}>"
        if name not in vocab:
            vocab[name] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok, ["<s>", "</s>", "<unk>"]


CASES = {
    "qwen2": build_qwen2,
    "llama3": build_llama3,
    "gpt2": build_gpt2,
    "roberta": build_roberta,
    "modernbert": build_modernbert,
    "bert_uncased": build_bert_uncased,
    "bert_cased": build_bert_cased,
    "bert_strip": build_bert_strip,
    "bpe_subword": build_bpe_subword,
    "split_behaviors": build_split_behaviors,
    "byte_fallback": build_byte_fallback,
}


def legacy_merges(path_in, path_out):
    """The same tokenizer with merges written as "a b" strings (the older
    format), for the parts that have no space in them."""
    with open(path_in, encoding="utf-8") as f:
        data = json.load(f)
    merges = data["model"]["merges"]
    assert all(" " not in a and " " not in b for a, b in merges)
    data["model"]["merges"] = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    with open(path_out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


def build_all(out_dir, names=None):
    """Writes <name>.json and <name>.jsonl (the test corpus); returns the
    names written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, build in CASES.items():
        if names and name not in names:
            continue
        tok, specials = build()
        path = os.path.join(out_dir, name + ".json")
        tok.save(path)
        write_corpus(os.path.join(out_dir, name + ".jsonl"), test_corpus(specials))
        written.append(name)
        if name == "qwen2":
            legacy_merges(path, os.path.join(out_dir, "qwen2_legacy.json"))
            write_corpus(os.path.join(out_dir, "qwen2_legacy.jsonl"), test_corpus(specials))
            written.append("qwen2_legacy")
    return written


def write_corpus(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps({"text": line}, ensure_ascii=False) + "\n")
