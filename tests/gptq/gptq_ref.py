"""GPTQ reference in float64 numpy, transcribed from AutoGPTQ's
GPTQ.add_batch / fasterquant and Quantizer.find_params (auto_gptq/
quantization/gptq.py, quantizer.py), with the one change qtool makes on
purpose: the scale is rounded to fp16 before it is used, so the error fed
back is that of the stored weights. Also: the AutoGPTQ v1 packing
(qlinear_cuda_old.QuantLinear.pack) and a round-to-nearest baseline."""
import numpy as np


def accumulate_h(batches, k):
    """H = (2/n) sum x x^T as a running average over the batches."""
    h = np.zeros((k, k))
    nsamples = 0
    for x in batches:
        x = np.asarray(x, dtype=np.float64)
        t = x.shape[0]
        h *= nsamples / (nsamples + t)
        nsamples += t
        xs = np.sqrt(2.0 / nsamples) * x
        h += xs.T @ xs
    return h


def f16(v):
    """The fp16 value of a positive scale (clamped as qtool clamps)."""
    v = np.clip(v, 2.0 ** -24, 65504.0)
    return np.asarray(v, dtype=np.float16).astype(np.float64)


def find_params(x, sym, bits=4):
    """x: [rows, cols] -> scale (fp16-rounded), zero per row."""
    maxq = 2 ** bits - 1
    xmin = np.minimum(x.min(axis=1), 0)
    xmax = np.maximum(x.max(axis=1), 0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        neg = xmin < 0
        xmin = np.where(neg, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = np.where(both0, -1.0, xmin)
    xmax = np.where(both0, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = np.full_like(scale, (maxq + 1) / 2)
    else:
        zero = np.round(-xmin / scale)
    return f16(scale), zero


def quantize(x, scale, zero, maxq=15):
    q = np.clip(np.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero), q


def oas_rho(H, n):
    """Oracle Approximating Shrinkage intensity of the correlation matrix
    of the live inputs (Chen et al. 2010), as qtool's gptq computes it."""
    d = np.diag(H)
    live = d > 0
    p = int(live.sum())
    if p < 2:
        return 0.0
    Hl = H[np.ix_(live, live)]
    s = np.sqrt(d[live])
    R = Hl / np.outer(s, s)
    tr2 = float((R ** 2).sum())
    den = (n + 1 - 2 / p) * (tr2 - p)
    if not den > 0:
        return 1.0
    return float(np.clip(((1 - 2 / p) * tr2 + p * p) / den, 0.0, 1.0))


def shrink(H, rho):
    """(1 - rho) H + rho diag(H)."""
    return (1 - rho) * H + rho * np.diag(np.diag(H))


def gptq(W, H, group_size=128, percdamp=0.01, actorder=False, static_groups=False, sym=True, blocksize=128):
    """Returns codes [N, K] (original column order), scales [N, ngroups],
    zeros [N, ngroups] (group index as saved), g_idx [K], dequantized Q."""
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    rows, columns = W.shape
    if group_size == -1:
        group_size = columns
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static_groups:
        for i in range(0, columns, group_size):
            groups.append(find_params(W[:, i:i + group_size], sym))
    perm = np.arange(columns)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    invperm = np.argsort(perm)
    Q = np.zeros_like(W)
    codes = np.zeros(W.shape, dtype=np.int64)
    damp = percdamp * np.mean(np.diag(H))
    H[np.diag_indices(columns)] += damp
    L = np.linalg.cholesky(H)
    Hinv_full = np.linalg.inv(L).T @ np.linalg.inv(L)  # cholesky_inverse
    Hinv = np.linalg.cholesky(Hinv_full).T  # upper
    scale_list, zero_list = [], []
    scale = zero = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        C1 = np.zeros(W1.shape, dtype=np.int64)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if not static_groups:
                if (i1 + i) % group_size == 0:
                    scale, zero = find_params(W[:, (i1 + i):(i1 + i + group_size)], sym)
                    scale_list.append(scale)
                    zero_list.append(zero)
            else:
                scale, zero = groups[perm[i1 + i] // group_size]
            q, c = quantize(w, scale, zero)
            Q1[:, i] = q
            C1[:, i] = c
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        codes[:, i1:i2] = C1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if static_groups:
        scale_list = [g[0] for g in groups]
        zero_list = [g[1] for g in groups]
        g_idx = np.array([perm[i] // group_size for i in range(columns)])
    else:
        g_idx = np.array([i // group_size for i in range(columns)])
    if actorder:
        Q = Q[:, invperm]
        codes = codes[:, invperm]
        g_idx = g_idx[invperm]
    scales = np.stack(scale_list, axis=1)
    zeros = np.stack(zero_list, axis=1)
    return codes, scales, zeros, g_idx.astype(np.int32), Q


def rtn(W, group_size=128, sym=True):
    """Round-to-nearest with the same quantizer, for comparisons."""
    W = np.asarray(W, dtype=np.float64)
    rows, cols = W.shape
    g = cols if group_size == -1 else group_size
    Q = np.zeros_like(W)
    for i in range(0, cols, g):
        s, z = find_params(W[:, i:i + g], sym)
        Q[:, i:i + g] = quantize(W[:, i:i + g], s[:, None], z[:, None])[0]
    return Q


def pack_v1(codes, scales, zeros, g_idx):
    """AutoGPTQ QuantLinear.pack (4 bits): qweight [K/8, N] packed along the
    input, LSB first; qzeros [ngroups, N/8] holding zero - 1, packed along
    the output; scales [ngroups, N] fp16."""
    intweight = codes.T.astype(np.uint32)  # [K, N]
    k, n = intweight.shape
    qweight = np.zeros((k // 8, n), dtype=np.uint32)
    for row in range(k // 8):
        for j in range(8):
            qweight[row] |= intweight[row * 8 + j] << np.uint32(4 * j)
    z = (zeros.T.astype(np.int64) - 1).astype(np.uint32)  # [ngroups, N]
    qzeros = np.zeros((z.shape[0], n // 8), dtype=np.uint32)
    for col in range(n // 8):
        for j in range(8):
            qzeros[:, col] |= z[:, col * 8 + j] << np.uint32(4 * j)
    return qweight.view(np.int32), qzeros.view(np.int32), scales.T.astype(np.float16), g_idx.astype(np.int32)
