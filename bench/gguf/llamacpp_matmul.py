"""Times ggml's CPU matmul (ggml_mul_mat, the op llama.cpp runs for every
Linear) on the shapes and types of bench_gguf, through ctypes on the ggml
libraries llama-cpp-python ships. Run by llamacpp_compare.sh.

Weights are quantized with ggml_quantize_chunk (no importance matrix), the
activations are F32 [M, K] as in qtool; ggml converts them to the weight
type's vec_dot type (Q8_0 / Q8_1 / Q8_K) inside the op, as qtool does.
"""
import ctypes
import glob
import os
import statistics
import time

import numpy as np
import llama_cpp

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
base = ctypes.CDLL(glob.glob(os.path.join(LIB, "libggml-base.so"))[0], mode=ctypes.RTLD_GLOBAL)
ggml = ctypes.CDLL(glob.glob(os.path.join(LIB, "libggml.so"))[0], mode=ctypes.RTLD_GLOBAL)
cpu = ctypes.CDLL(glob.glob(os.path.join(LIB, "libggml-cpu.so"))[0], mode=ctypes.RTLD_GLOBAL)


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


vp = ctypes.c_void_p
base.ggml_init.restype = vp
base.ggml_init.argtypes = [InitParams]
base.ggml_free.argtypes = [vp]
base.ggml_new_tensor_2d.restype = vp
base.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
base.ggml_get_data.restype = vp
base.ggml_get_data.argtypes = [vp]
base.ggml_quantize_chunk.restype = ctypes.c_size_t
base.ggml_quantize_chunk.argtypes = [ctypes.c_int, vp, vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, vp]
base.ggml_mul_mat.restype = vp
base.ggml_mul_mat.argtypes = [vp, vp, vp]
base.ggml_new_graph.restype = vp
base.ggml_new_graph.argtypes = [vp]
base.ggml_build_forward_expand.argtypes = [vp, vp]
cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
if hasattr(cpu, "ggml_cpu_init"):
    cpu.ggml_cpu_init()

TYPES = {"F32": 0, "Q8_0": 8, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama.cpp's, for K % 256 != 0
M = int(os.environ.get("M", 256))
SHAPES = [(int(os.environ.get("K", 896)), int(os.environ.get("N", 4864)))]
if "K" not in os.environ:
    SHAPES.append((4864, 896))
THREADS = [int(t) for t in os.environ.get("THREADS", "1 2").split()]
NAMES = os.environ.get("TYPES", " ".join(TYPES)).split()
REPS = int(os.environ.get("REPS", 5))


def bench(name, K, N, threads, x, w):
    stored = FALLBACK.get(name, name) if K % 256 else name
    t = TYPES[stored]
    ctx = base.ggml_init(InitParams(512 << 20, None, False))
    a = base.ggml_new_tensor_2d(ctx, t, K, N)
    if t == 0:
        ctypes.memmove(base.ggml_get_data(a), w.ctypes.data, w.nbytes)
    else:
        base.ggml_quantize_chunk(t, w.ctypes.data, base.ggml_get_data(a), 0, N, K, None)
    b = base.ggml_new_tensor_2d(ctx, 0, K, M)
    ctypes.memmove(base.ggml_get_data(b), x.ctypes.data, x.nbytes)
    c = base.ggml_mul_mat(ctx, a, b)
    gf = base.ggml_new_graph(ctx)
    base.ggml_build_forward_expand(gf, c)
    cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)
    times = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)
        times.append(time.perf_counter() - t0)
    base.ggml_free(ctx)
    return stored, statistics.median(times)


def main():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    print(f"CPU: {model}\nllama-cpp-python {llama_cpp.__version__} (ggml_mul_mat), M = {M}, median of {REPS} runs")
    print(f"{'type':6} {'K x N':11} {'thr':3} {'stored':7} {'ms':>9} {'GFLOP/s':>9} {'vs F32':>8}")
    rng = np.random.default_rng(1)
    for K, N in SHAPES:
        x = (rng.random((M, K), dtype=np.float32) - 0.5).astype(np.float32)
        w = ((rng.random((N, K), dtype=np.float32) - 0.5) * 0.1).astype(np.float32)
        flop = 2.0 * M * N * K
        for th in THREADS:
            f32 = None
            for name in NAMES:
                stored, t = bench(name, K, N, th, x, w)
                if name == "F32":
                    f32 = t
                ratio = f"{f32 / t:8.2f}" if f32 else "       -"
                print(f"{name:6} {K:4}x{N:<6} {th:<3} {stored:7} {t * 1e3:9.2f} {flop / t * 1e-9:9.1f} {ratio}")


if __name__ == "__main__":
    main()
