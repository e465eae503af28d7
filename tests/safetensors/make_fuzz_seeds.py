#!/usr/bin/env python3
"""Writes seed inputs for the safetensors fuzz target: small files from the
reference writer (every dtype, metadata, scalars, empty tensors) and
hand-made edge cases (misaligned data, gaps, broken headers). The committed
corpus in tests/fuzz/corpus/safetensors grew from these by fuzzing and
`-merge=1`.

usage: make_fuzz_seeds.py OUT_FOLDER
"""
import json
import os
import struct
import sys

import numpy as np
import safetensors
from safetensors import TensorSpec
from safetensors.numpy import save

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1)
n = 0


def put(data):
    global n
    with open(os.path.join(out, f"seed_{n:03d}"), "wb") as fp:
        fp.write(data)
    n += 1


def raw(header, data=b"", pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


for dt in [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8,
           np.uint16, np.uint32, np.uint64, np.bool_]:
    put(save({"w": rng.integers(0, 2, (2, 3)).astype(dt), "s": np.array(1, dt), "e": np.zeros((0, 2), dt)}))
put(save({"a": np.ones(3, np.float32), "b.weight": np.ones((2, 2, 2, 2), np.float16)},
         metadata={"format": "pt", "note": "h\u00e9"}))
put(save({}))
keep = []
for ctor, nbytes, shape in [("bfloat16", 8, [4]), ("float8_e4m3fn", 4, [2, 2]), ("float8_e5m2", 3, [3]),
                            ("float4_e2m1fn_x2", 2, [2]), ("complex64", 16, [2]), ("float8_e8m0fnu", 1, [1])]:
    buf = rng.integers(0, 256, nbytes, dtype=np.uint8)
    keep.append(buf)
    put(safetensors.serialize({"t": TensorSpec(dtype=ctor, shape=shape, data_ptr=buf.ctypes.data,
                                                data_len=nbytes)}, metadata={"k": "v"}))


def T(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# Misaligned data (unpadded header, odd offsets), gaps, trailing bytes, extra keys.
put(raw({"b": T("U8", [1], 0, 1), "f": T("F32", [2], 1, 9), "d": T("F64", [1], 9, 17)}, bytes(range(17)), pad=False))
put(raw({"a": T("U8", [2], 0, 2), "b": T("I16", [], 4, 6), "z": T("U8", [0], 3, 3)}, bytes(10)))
put(raw({"__metadata__": None, "a": dict(T("U8", [2], 0, 2), extra=[1])}, b"xy"))
put(raw({"a": T("F6_E2M3", [4], 0, 3), "b": T("F4", [2, 2], 3, 5)}, bytes(5)))
# Broken ones, one rule each.
put(raw({"a": T("F32", [2], 0, 4)}, bytes(8)))
put(raw({"a": T("U8", [8], 0, 8), "b": T("U8", [8], 4, 12)}, bytes(12)))
put(raw({"a": T("U8", [1], 10, 4)}, bytes(16)))
put(raw({"a": T("U8", [1, 1, 1, 1, 1], 0, 1)}, bytes(1)))
put(raw({"a": T("U8", [-1], 0, 1)}, bytes(1)))
put(raw({"__metadata__": {"k": 1}}))
put(raw(b'{"a":' + json.dumps(T("U8", [1], 0, 1)).encode() + b',"a":' + json.dumps(T("U8", [1], 1, 2)).encode() + b"}", b"ab"))
put(struct.pack("<Q", 1000) + b"{}")
put(b"\x02\0\0\0")
print(f"wrote {n} seeds to {out}")
