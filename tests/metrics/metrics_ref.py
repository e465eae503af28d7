"""Reference implementation of the measurement protocol (docs/measurements.md)
in float64 numpy + scikit-learn, used by test_metrics_ref.py and the report
tests. Independent of qtool's C code except for the documented RNG, which
is reimplemented here from its specification."""
import numpy as np

M64 = (1 << 64) - 1


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro:
    """xoshiro256** seeded by splitmix64, bounded draws by rejection."""

    def __init__(self, seed):
        x = seed & M64
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    def next(self):
        s = self.s
        result = (_rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def below(self, n):
        if n <= 1:
            return 0
        threshold = ((1 << 64) - n) % n
        while True:
            x = self.next()
            if x >= threshold:
                return x % n

    def shuffle(self, a):
        for i in range(len(a) - 1, 0, -1):
            j = self.below(i + 1)
            a[i], a[j] = a[j], a[i]
        return a


def log_softmax(z, T=1.0):
    s = z.astype(np.float64) / T
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


def nll(z, y, T=1.0):
    ls = log_softmax(z, T)
    return float(-ls[np.arange(len(y)), y].mean())


def softmax(z, T=1.0):
    s = z.astype(np.float64) / T
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(z, y, T=1.0, bins=15):
    p = softmax(z, T)
    conf = p.max(axis=1)
    pred = z.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    n = len(y)
    for b in range(bins):
        sel = (conf > edges[b]) & (conf <= edges[b + 1])
        k = sel.sum()
        if k:
            total += abs(correct[sel].mean() - conf[sel].mean()) * k / n
    return total


def fit_temperature(z, y, lo=0.01, hi=100.0):
    """Grid over log T, then repeated finer grids around the best point."""
    a, b = np.log(lo), np.log(hi)
    best = None
    for _ in range(8):
        grid = np.linspace(a, b, 201)
        vals = [nll(z, y, np.exp(u)) for u in grid]
        k = int(np.argmin(vals))
        best = grid[k]
        step = grid[1] - grid[0]
        a, b = max(np.log(lo), best - 2 * step), min(np.log(hi), best + 2 * step)
    return float(np.exp(best))


def split_indices(n, seed=42):
    idx = Xoshiro(seed).shuffle(list(range(n)))
    na = n // 2
    return np.array(idx[:na], dtype=np.int64), np.array(idx[na:], dtype=np.int64)


def assign_tiers(counts, head, mid):
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))
    tier = np.empty(len(counts), dtype=np.int64)
    for r, k in enumerate(order):
        tier[k] = 0 if r < head else (1 if r < head + mid else 2)
    return tier


def tiers(pred, ref_pred, y, tier_of, resamples=1000, seed=42, level=0.95, min_flips=20):
    out = {}
    for t, name in enumerate(["head", "mid", "tail"]):
        rows = np.nonzero(tier_of[y] == t)[0]
        m = len(rows)
        r = {"n": m, "classes": int((tier_of == t).sum())}
        cq = (pred[rows] == y[rows]).astype(np.int64)
        cr = (ref_pred[rows] == y[rows]).astype(np.int64)
        r["flips"] = int((pred[rows] != ref_pred[rows]).sum())
        r["directional"] = r["flips"] < min_flips
        if m == 0:
            r.update(accuracy=None, reference_accuracy=None, delta=None, ci_low=None, ci_high=None)
            out[name] = r
            continue
        r["accuracy"] = cq.mean()
        r["reference_accuracy"] = cr.mean()
        r["delta"] = r["accuracy"] - r["reference_accuracy"]
        rng = Xoshiro(seed)
        d = cq - cr
        deltas = np.empty(resamples)
        for b in range(resamples):
            s = 0
            for _ in range(m):
                s += d[rng.below(m)]
            deltas[b] = s / m
        tail = (1 - level) / 2 * 100
        r["ci_low"], r["ci_high"] = np.percentile(deltas, [tail, 100 - tail])
        r["_d"] = d
        out[name] = r
    return out
