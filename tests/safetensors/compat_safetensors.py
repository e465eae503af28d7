#!/usr/bin/env python3
"""qtool's safetensors reader and writer against the reference `safetensors`
package (PyPI): files the reference writes read back through st_tool with the
same names, dtypes, shapes, bytes and metadata; files qtool writes load in the
reference the same way. Fresh random data each run (the seed is printed).

usage: compat_safetensors.py ST_TOOL
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import safetensors
    from safetensors import TensorSpec
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # the reference packages are optional for a build
    print(f"skipped: {e}")
    sys.exit(77)

ST_TOOL = sys.argv[1]
SEED = int.from_bytes(os.urandom(4), "little")
print(f"seed {SEED}")
rng = np.random.default_rng(SEED)
failures = []

# qtool_dtype values (sdk/include/qtool/plugin.h); everything else is opaque (PACKED = 10).
QTOOL_DTYPES = {"F32": 0, "F16": 1, "BF16": 2, "I8": 3, "U8": 4, "I32": 5, "I64": 6, "F64": 7,
                "F8_E4M3": 8, "I16": 9}
PACKED = 10

NUMPY_TYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
               "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
               "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
# Dtypes numpy lacks: reference constructor name, bytes per element (F4: two per byte).
RAW_TYPES = {"BF16": ("bfloat16", 2), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
             "F8_E8M0": ("float8_e8m0fnu", 1), "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
             "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1), "C64": ("complex64", 8), "F4": ("float4_e2m1fn_x2", 0.5)}
SHAPES = [(), (0,), (5,), (3, 0), (2, 3), (1, 0, 2), (2, 3, 4, 5), (17,)]


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")


def st_tool(*args):
    return subprocess.run([ST_TOOL, *args], capture_output=True, text=True)


def dump(path):
    r = st_tool("dump", path)
    if r.returncode != 0:
        check(False, f"st_tool dump {path}: {r.stderr.strip()}")
        return {"files": [], "tensors": []}
    return json.loads(r.stdout)


def random_array(code, shape):
    dt = NUMPY_TYPES[code]
    if code == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dt, np.floating):
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


def compare_dump(d, expected, where):
    """expected: name -> (dtype code, shape, bytes)."""
    got = {t["name"]: t for t in d["tensors"]}
    check(sorted(got) == sorted(expected), f"{where}: names {sorted(got)} != {sorted(expected)}")
    for name, (code, shape, data) in expected.items():
        t = got.get(name)
        if t is None:
            continue
        check(t["dtype"] == code, f"{where}/{name}: dtype {t['dtype']} != {code}")
        check(tuple(t["shape"]) == tuple(shape), f"{where}/{name}: shape {t['shape']} != {list(shape)}")
        check(t["nbytes"] == len(data), f"{where}/{name}: nbytes {t['nbytes']} != {len(data)}")
        check(bytes.fromhex(t["hex"]) == bytes(data), f"{where}/{name}: data differs")
        check(t["view_dtype"] == QTOOL_DTYPES.get(code, PACKED), f"{where}/{name}: view dtype {t['view_dtype']}")


def reference_writes(tmp):
    """Files from the reference writer read identically."""
    tensors, expected = {}, {}
    for code in NUMPY_TYPES:
        for i, shape in enumerate(SHAPES):
            a = random_array(code, shape)
            tensors[f"np.{code}.{i}"] = a
            expected[f"np.{code}.{i}"] = (code, shape, a.tobytes())
    meta = {"format": "np", "note": "h\u00e9llo \u2713", "empty": ""}
    path = os.path.join(tmp, "ref_numpy.safetensors")
    save_file(tensors, path, metadata=meta)
    d = dump(path)
    compare_dump(d, expected, "reference numpy file")
    check(d["files"] and d["files"][0]["metadata"] == meta, f"metadata {d['files'][:1]} != {meta}")

    # Dtypes numpy lacks, through the reference's raw serializer.
    specs, keep, expected = {}, [], {}
    for code, (ctor, size) in RAW_TYPES.items():
        for i, shape in enumerate([(4,), (2, 6), (0, 2), (3, 2, 2)]):
            numel = int(np.prod(shape))
            nbytes = int(numel * size)
            buf = rng.integers(0, 256, max(nbytes, 1), dtype=np.uint8)
            keep.append(buf)
            # F4 packs two values a byte: the reference takes the storage
            # shape (last dim halved) and records the logical one.
            storage = shape[:-1] + (shape[-1] // 2,) if code == "F4" else shape
            specs[f"raw.{code}.{i}"] = TensorSpec(dtype=ctor, shape=list(storage),
                                                  data_ptr=buf.ctypes.data, data_len=nbytes)
            expected[f"raw.{code}.{i}"] = (code, shape, buf.tobytes()[:nbytes])
    path = os.path.join(tmp, "ref_raw.safetensors")
    safetensors.serialize_file(specs, path, metadata={"k": "v"})
    compare_dump(dump(path), expected, "reference raw file")

    # More than 4 dims: refused with a clear one-line message.
    path = os.path.join(tmp, "ref_5d.safetensors")
    save_file({"five": np.zeros((1, 2, 1, 2, 1), np.float32)}, path)
    r = st_tool("check", path)
    check(r.returncode == 1 and "five" in r.stderr and "5 dims" in r.stderr
          and r.stderr.count("\n") == 1, f"5-dim tensor: rc {r.returncode}, {r.stderr!r}")

    # Sharded checkpoint as transformers saves it.
    folder = os.path.join(tmp, "sharded")
    os.mkdir(folder)
    expected, weight_map = {}, {}
    for s in range(3):
        shard = f"model-{s + 1:05d}-of-00003.safetensors"
        part = {}
        for j in range(4):
            name = f"model.layers.{s * 4 + j}.weight"
            a = random_array("F16", (8, 3))
            part[name] = a
            weight_map[name] = shard
            expected[name] = ("F16", (8, 3), a.tobytes())
        save_file(part, os.path.join(folder, shard), metadata={"format": "pt"})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fp:
        json.dump({"metadata": {"total_size": 12 * 48}, "weight_map": weight_map}, fp)
    d = dump(folder)
    compare_dump(d, expected, "reference sharded checkpoint")
    check(len(d["files"]) == 3, f"sharded: {len(d['files'])} files")


def qtool_writes(tmp):
    """Files from qtool's writer load in the reference."""
    spec, expected = [], {}
    for code in NUMPY_TYPES:
        for i, shape in enumerate(SHAPES):
            data = random_array(code, shape).tobytes()
            spec.append({"name": f"np.{code}.{i}", "dtype": code, "shape": list(shape), "hex": data.hex()})
            expected[f"np.{code}.{i}"] = (code, shape, data)
    for code, (_, size) in RAW_TYPES.items():
        for i, shape in enumerate([(4,), (2, 6), (0, 2), ()] if code != "F4" else [(4,), (2, 6), (0, 2)]):
            data = rng.integers(0, 256, int(int(np.prod(shape)) * size), dtype=np.uint8).tobytes()
            spec.append({"name": f"raw.{code}.{i}", "dtype": code, "shape": list(shape), "hex": data.hex()})
            expected[f"raw.{code}.{i}"] = (code, shape, data)
    meta = {"format": "pt", "quantization": "nf4 \u00fc", "empty": ""}
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as fp:
        json.dump({"metadata": meta, "tensors": spec}, fp)
    path = os.path.join(tmp, "qtool.safetensors")
    r = st_tool("write", path, spec_path)
    check(r.returncode == 0, f"st_tool write: {r.stderr.strip()}")
    if r.returncode:
        return
    raw = open(path, "rb").read()

    # Everything, as raw bytes, through the reference parser.
    got = dict(safetensors.deserialize(raw))
    check(sorted(got) == sorted(expected), "qtool file: names differ")
    for name, (code, shape, data) in expected.items():
        t = got.get(name)
        if t is None:
            continue
        check(t["dtype"] == code, f"qtool file/{name}: dtype {t['dtype']} != {code}")
        check(tuple(t["shape"]) == tuple(shape), f"qtool file/{name}: shape {t['shape']}")
        check(bytes(t["data"]) == data, f"qtool file/{name}: data differs")

    # Typed arrays and metadata through the numpy API.
    with safetensors.safe_open(path, framework="numpy") as f:
        check(f.metadata() == meta, f"qtool file: metadata {f.metadata()} != {meta}")
        for name, (code, shape, data) in expected.items():
            if code in NUMPY_TYPES:
                a = f.get_tensor(name)
                check(a.dtype == NUMPY_TYPES[code] and a.shape == tuple(shape) and a.tobytes() == data,
                      f"qtool file/{name}: numpy array differs")

    # Layout: header padded to 8 bytes, every tensor aligned to its element size.
    (hlen,) = struct.unpack("<Q", raw[:8])
    check(hlen % 8 == 0, f"header length {hlen} is not a multiple of 8")
    header = json.loads(raw[8:8 + hlen])
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = info["dtype"]
        size = np.dtype(NUMPY_TYPES[code]).itemsize if code in NUMPY_TYPES else max(1, int(RAW_TYPES[code][1]))
        check((8 + hlen + info["data_offsets"][0]) % size == 0, f"{name} is not aligned")

    # A numpy-only file round-trips through load_file as a whole.
    np_spec = [s for s in spec if s["dtype"] in NUMPY_TYPES]
    with open(spec_path, "w") as fp:
        json.dump({"tensors": np_spec}, fp)
    path = os.path.join(tmp, "qtool_np.safetensors")
    r = st_tool("write", path, spec_path)
    check(r.returncode == 0, f"st_tool write numpy-only: {r.stderr.strip()}")
    if r.returncode == 0:
        loaded = load_file(path)
        for s in np_spec:
            a = loaded[s["name"]]
            check(a.tobytes() == bytes.fromhex(s["hex"]) and list(a.shape) == s["shape"],
                  f"load_file/{s['name']} differs")


with tempfile.TemporaryDirectory(prefix="qt_st_compat_") as tmp:
    reference_writes(tmp)
    qtool_writes(tmp)

if failures:
    print(f"{len(failures)} checks failed")
    sys.exit(1)
print("all compatibility checks passed")
