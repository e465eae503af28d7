"""GGUF checks against the `gguf` PyPI package (and ggml itself when found).

usage: test_gguf_reference.py GGUF_TOOL

1. For every block type: the codes our quantizer writes dequantize, through
   gguf.quants.dequantize, to exactly (bit for bit) what our dequantizer
   gives; where gguf.quants can quantize the type (Q8_0, Q4_0, Q4_1, Q5_0,
   Q5_1) the bytes are identical to its quantizer; the reconstruction error
   is within a per-type bound. When ggml's own library is found
   (QTOOL_GGML_LIB; the llama_cpp package of QTOOL_LLAMACPP_PYTHON; or the
   llama-cpp-python venv bench/gguf/llamacpp_compare.sh installs under the
   build folder), every type, the k-quants included, is also byte-compared
   with ggml's quantize_row_*_ref, and the importance-weighted quantizers
   (imatrix) with ggml_quantize_chunk(type, x, y, 0, rows, cols, imatrix)
   on random matrices and random positive importance vectors (with exact
   zeros and a wide dynamic range); without the library that check is
   skipped with a message.
2. Files written by gguf.GGUFWriter (every key type, arrays of every kind,
   a nested array, F32/F16/Q8_0/Q4_K tensors) read the same through our
   reader as through gguf.GGUFReader.
3. A file from our writer reads back through gguf.GGUFReader with every
   value, the alignment and the tensor data intact.
"""
import ctypes
import glob
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T
except ImportError as e:  # the reference packages are not installed
    print(f"skipped: {e}")
    sys.exit(77)

TOOL = sys.argv[1]
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
# Relative RMS error bound of the reconstruction for Gaussian data (about
# 1.5x what each type reaches), a sanity check that the codes mean something.
REL_RMSE = {"Q8_0": 0.006, "Q4_0": 0.15, "Q4_1": 0.14, "Q5_0": 0.075, "Q5_1": 0.07,
            "Q4_K": 0.14, "Q5_K": 0.07, "Q6_K": 0.035}
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


def run(*args):
    r = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"gguf_tool {args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def llamacpp_python_lib():
    """libggml-base.so of the llama_cpp package that QTOOL_LLAMACPP_PYTHON imports."""
    py = os.environ.get("QTOOL_LLAMACPP_PYTHON")
    if not py:
        return None
    r = subprocess.run([py, "-c", "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))"],
                       capture_output=True, text=True)
    path = os.path.join(r.stdout.strip(), "lib", "libggml-base.so") if r.returncode == 0 else ""
    return path if os.path.exists(path) else None


def find_ggml():
    lib = os.environ.get("QTOOL_GGML_LIB") or llamacpp_python_lib()
    if not lib:
        build = os.environ.get("QTOOL_BUILD_DIR", "")
        hits = glob.glob(os.path.join(build, "llamacpp-venv/lib/python*/site-packages/llama_cpp/lib/libggml-base.so"))
        lib = hits[0] if hits else None
    if not lib or not os.path.exists(lib):
        return None
    return ctypes.CDLL(lib)


def cases(rng, cols):
    rows = 6
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    yield "gauss", g
    yield "scaled", (g * np.float32(1e-3)).astype(np.float32)
    yield "positive", np.abs(g) + np.float32(0.5)
    x = g.copy()
    x[:, 7::13] *= 40  # outliers
    x[1, :] = 0  # an all-zero row
    x[2, :256] = 0.25  # constant blocks
    yield "mixed", x


def test_blocks(tmp, rng, ggml):
    for name in TYPES:
        qt = T[name]
        for case, x in cases(rng, 512):
            src = os.path.join(tmp, "x.f32")
            out = os.path.join(tmp, f"{name}.gguf")
            x.tofile(src)
            run("quant", name, str(x.shape[0]), str(x.shape[1]), src, out)
            r = gguf.GGUFReader(out)
            t = {t.name: t for t in r.tensors}
            w, deq = t["w"], t["deq"]
            check(w.tensor_type == qt, f"{name}: stored type {w.tensor_type}")
            codes = np.asarray(w.data).reshape(x.shape[0], -1)
            ours = np.asarray(deq.data).reshape(x.shape)
            theirs = gguf.quants.dequantize(codes, qt).reshape(x.shape)
            check(np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)),
                  f"{name}/{case}: our dequantization differs from gguf.quants.dequantize "
                  f"(max diff {np.max(np.abs(ours - theirs))})")
            try:
                ref = gguf.quants.quantize(x, qt)
                check(np.array_equal(ref.reshape(codes.shape), codes),
                      f"{name}/{case}: bytes differ from gguf.quants.quantize "
                      f"({np.count_nonzero(ref.reshape(codes.shape) != codes)} bytes)")
            except NotImplementedError:
                pass
            if ggml is not None:
                fn = getattr(ggml, f"quantize_row_{name.lower().replace('_k', '_K')}_ref")
                ref = np.zeros(codes.size, np.uint8)
                xc = np.ascontiguousarray(x)
                fn(ctypes.c_void_p(xc.ctypes.data), ctypes.c_void_p(ref.ctypes.data), ctypes.c_int64(xc.size))
                check(np.array_equal(ref, codes.ravel()),
                      f"{name}/{case}: bytes differ from ggml quantize_row_*_ref "
                      f"({np.count_nonzero(ref != codes.ravel())} bytes)")
            if case == "gauss":
                rel = np.sqrt(np.mean((ours - x) ** 2) / np.mean(x ** 2))
                check(rel < REL_RMSE[name], f"{name}: relative RMS error {rel:.4f} >= {REL_RMSE[name]}")
        print(f"{name}: ok")


GGML_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def importance(rng, cols, kind):
    """A random positive per-column importance vector (mean x_j^2 in llama.cpp's imatrix)."""
    if kind == "lognormal":
        return np.exp(rng.standard_normal(cols) * 1.5).astype(np.float32)
    if kind == "wide":  # 12 decades, as dead and outlier channels give
        return (10.0 ** rng.uniform(-6, 6, cols)).astype(np.float32)
    q = rng.uniform(0.0, 2.0, cols).astype(np.float32)  # "zeros": unused columns, whole blocks among them
    q[rng.random(cols) < 0.2] = 0
    q[32:64] = 0
    return q


def test_imatrix(tmp, rng, ggml):
    """Our imatrix quantizers against ggml_quantize_chunk with an imatrix, byte for byte."""
    if ggml is None:
        print("imatrix: skipped: ggml library not found (set QTOOL_GGML_LIB or QTOOL_LLAMACPP_PYTHON, or run "
              "bench/gguf/llamacpp_compare.sh to install llama-cpp-python under the build folder)")
        return
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    for name in TYPES:
        block = 256 if name.endswith("_K") else 32
        n_cases = same = 0
        for cols in sorted({512, 96 if block == 32 else 768}):
            for case, x in cases(rng, cols):
                for kind in ("lognormal", "wide", "zeros"):
                    qw = importance(rng, cols, kind)
                    src, qsrc = os.path.join(tmp, "x.f32"), os.path.join(tmp, "qw.f32")
                    out = os.path.join(tmp, f"{name}.imatrix.gguf")
                    xc = np.ascontiguousarray(x[:, :cols])
                    xc.tofile(src)
                    qw.tofile(qsrc)
                    run("quant", name, str(xc.shape[0]), str(cols), src, out, qsrc)
                    t = {t.name: t for t in gguf.GGUFReader(out).tensors}
                    codes = np.asarray(t["w"].data).ravel()
                    ref = np.zeros(codes.size, np.uint8)
                    n = ggml.ggml_quantize_chunk(GGML_IDS[name], xc.ctypes.data, ref.ctypes.data, 0, xc.shape[0], cols,
                                                 qw.ctypes.data)
                    check(n == codes.size, f"{name} imatrix: ggml wrote {n} bytes, we {codes.size}")
                    same += int(np.array_equal(ref, codes))
                    check(np.array_equal(ref, codes),
                          f"{name}/{case}/{kind} K={cols}: imatrix bytes differ from ggml_quantize_chunk "
                          f"({np.count_nonzero(ref != codes)} of {codes.size} bytes)")
                    n_cases += 1
        print(f"{name} imatrix: {same} of {n_cases} cases identical to ggml_quantize_chunk")


def reader_value(field):
    """A field's value as our dump prints it."""
    vt = field.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == gguf.GGUFValueType.ARRAY:
            return int(field.parts[4][0])  # outer count (parts: key len, key, type, elem type, count, ...)
        v = field.contents()
        if sub == gguf.GGUFValueType.UINT64:
            return [str(int(e)) for e in v]
        return list(v)
    v = field.contents()
    if vt == gguf.GGUFValueType.UINT64:
        return str(int(v))
    return v


def same(a, b):
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return float(a) == float(b)
    return a == b


def test_python_writer(tmp, rng):
    path = os.path.join(tmp, "py.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("k.u8", 250)
    w.add_int8("k.i8", -120)
    w.add_uint16("k.u16", 65000)
    w.add_int16("k.i16", -32000)
    w.add_uint32("k.u32", 4000000000)
    w.add_int32("k.i32", -2000000000)
    w.add_float32("k.f32", 1.1)
    w.add_bool("k.bool", False)
    w.add_string("k.str", "d\u00e9j\u00e0 vu")
    w.add_uint64("k.u64", 2**63 + 5)
    w.add_int64("k.i64", -(2**62))
    w.add_float64("k.f64", -0.3)
    w.add_array("a.str", ["a", "", "\u4e2d\u6587", "tok " * 50])
    w.add_array("a.int", [1, -2, 3])
    w.add_array("a.float", [0.5, -1.25])
    w.add_array("a.bool", [True, False])
    w.add_array("a.nested", [[1, 2, 3], [4]])
    for vt, val in [(gguf.GGUFValueType.UINT8, [1, 255]), (gguf.GGUFValueType.INT16, [-5, 5]),
                    (gguf.GGUFValueType.UINT64, [2**64 - 1, 0]), (gguf.GGUFValueType.FLOAT64, [1e-300, 2.0])]:
        w.add_key_value(f"a.{vt.name.lower()}", val, gguf.GGUFValueType.ARRAY, sub_type=vt)
    w.add_tensor("t.f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("t.f16", rng.standard_normal((7,)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
    w.add_tensor("t.q8", q8, raw_dtype=T.Q8_0)
    q4k = rng.integers(0, 256, (2, 144), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_down.weight", q4k, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ours = json.loads(run("dump", path))
    r = gguf.GGUFReader(path)
    check(ours["version"] == 3, "python file: version")
    fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
    check(len(fields) == len(ours["kv"]), f"python file: {len(ours['kv'])} keys read, {len(fields)} expected")
    for f, kv in zip(fields, ours["kv"]):
        check(f.name == kv["key"], f"key order: {kv['key']} vs {f.name}")
        check(kv["type"] == {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool",
                             8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64"}[int(f.types[0])],
              f"{f.name}: type {kv['type']}")
        check(same(kv["value"], reader_value(f)), f"{f.name}: value {kv['value']!r} vs {reader_value(f)!r}")
    check(len(r.tensors) == len(ours["tensors"]), "python file: tensor count")
    for t, ot in zip(r.tensors, ours["tensors"]):
        check(t.name == ot["name"] and t.tensor_type.name == ot["type"], f"tensor {t.name}: name/type")
        check([int(d) for d in t.shape] == ot["ne"], f"tensor {t.name}: ne {ot['ne']} vs {list(t.shape)}")
        raw = np.asarray(t.data).view(np.uint8).tobytes()
        h = 1469598103934665603
        for byte in raw:
            h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
        check(ot["nbytes"] == len(raw) and ot["fnv1a"] == f"{h:016x}", f"tensor {t.name}: data differs")
        check(t.data_offset == ours["data_offset"] + ot["offset"], f"tensor {t.name}: offset")
    print("gguf.GGUFWriter -> our reader: ok")


def test_our_writer(tmp):
    path = os.path.join(tmp, "ours.gguf")
    run("write", path)
    r = gguf.GGUFReader(path)
    f = {k: v for k, v in r.fields.items()}
    expect = {
        "general.alignment": 64, "t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000,
        "t.u32": 4000000000, "t.i32": -2000000000, "t.u64": 10000000000000000000, "t.i64": -5000000000000,
        "t.f32": 0.15625, "t.f64": 2.718281828459045, "t.bool": True, "t.str": "h\u00e9llo",
        "a.u8": [0, 1, 255], "a.i8": [-128, 0, 127], "a.u16": [0, 65535], "a.i16": [-32768, 32767],
        "a.u32": [0, 4294967295], "a.i32": [-2147483648, 2147483647], "a.u64": [0, 18446744073709551615],
        "a.i64": [-9223372036854775808, 9223372036854775807], "a.f32": [-1.5, 3.25], "a.f64": [-1e300, 0.1],
        "a.bool": [True, False, True], "a.str": ["alpha", "", "\u00e9t\u00e9"], "a.empty": [],
    }
    for k, v in expect.items():
        check(k in f, f"our file: key {k} missing")
        if k in f:
            got = f[k].contents()
            got = [int(e) if isinstance(e, (np.integer, int)) and not isinstance(e, bool) else e for e in got] \
                if isinstance(got, list) else got
            check(same(got, v), f"our file: {k} = {got!r}, expected {v!r}")
    t = {t.name: t for t in r.tensors}
    check(np.array_equal(np.asarray(t["t0"].data).ravel(), np.arange(1, 7, dtype=np.float32)), "our file: t0 data")
    t1 = np.asarray(t["blk.0.t1"].data).astype(np.float32).ravel()
    check(np.array_equal(t1, np.arange(64, dtype=np.float32) / 8), "our file: t1 data")
    check([int(d) for d in t["blk.0.t1"].shape] == [4, 4, 4], "our file: t1 shape")
    check(all(x.data_offset % 64 == 0 for x in r.tensors), "our file: alignment 64 not honoured")
    print("our writer -> gguf.GGUFReader: ok")


def main():
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    ggml = find_ggml()
    print("ggml reference library:", "found" if ggml else "not found (k-quant byte check against ggml skipped)")
    with tempfile.TemporaryDirectory() as tmp:
        test_blocks(tmp, rng, ggml)
        test_imatrix(tmp, rng, ggml)
        test_python_writer(tmp, rng)
        test_our_writer(tmp)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("all GGUF reference checks passed")


if __name__ == "__main__":
    main()
