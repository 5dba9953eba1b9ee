#!/usr/bin/env python3
"""FAISS `IndexFlatIP` baseline for `cargo bench --bench matcher` (benches/matcher.rs).

Usage: faiss_baseline.py BASE QUERIES --dim 128 [--warmup 20] [--serve]

BASE and QUERIES are raw little-endian f32 files (rows of DIM values), written by the Rust
benchmark with the very vectors palmgate indexes and searches. The index is built, FAISS is
pinned to one thread, and each query is timed alone (`index.search(q[i:i+1], 1)`, nearest
rank percentiles, as on the Rust side). Without --serve it prints one JSON object:

  {"p50_ms", "min_ms", "p10_ms", "p99_ms", "mean_ms", "call_overhead_p50_ms", "top1": [...], "scores": [...],
   "faiss": version, "numpy": version, "simd": compile options, "threads": 1, "n", "nq"}

`call_overhead_p50_ms` is the same timed call on a one-vector index: the Python/SWIG cost
included in every FAISS time (a few microseconds).

With --serve it loads once, prints {"ready": true, ...versions}, then answers lines on stdin:
`time A B W` times queries A..B after W untimed warm-up searches and prints
{"ms": [...], "top1": [...], "scores": [...]}; `overhead` prints {"call_overhead_p50_ms"};
`quit` (or end of input) exits. The Rust side uses this to interleave FAISS with palmgate in
chunks of queries, so both see the same neighbours on a shared machine.

Exit status 3 (and {"error": ...}) when faiss or numpy is missing:
`pip install faiss-cpu numpy`.
"""

import argparse
import json
import math
import sys
import time

try:
    import numpy as np
    import faiss
except ImportError as e:  # pragma: no cover - reported to the Rust side
    print(json.dumps({"error": f"{e}; install with: pip install faiss-cpu numpy"}))
    sys.exit(3)


def nearest_rank(sorted_values, p):
    """The nearest-rank percentile (p in 0..100) of an ascending list."""
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def time_queries(index, q, warmup):
    """Per-query milliseconds, top-1 ids and scores of `q`, after `warmup` searches."""
    rows = [np.ascontiguousarray(q[i : i + 1]) for i in range(q.shape[0])]
    for row in rows[:warmup]:
        index.search(row, 1)
    times, top1, scores = [], [], []
    for row in rows:
        t0 = time.perf_counter()
        d, i = index.search(row, 1)
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        top1.append(int(i[0, 0]))
        scores.append(float(d[0, 0]))
    return times, top1, scores


def overhead_p50(tiny, q, warmup):
    times, _, _ = time_queries(tiny, q, warmup)
    return nearest_rank(sorted(times), 50)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("queries")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()

    faiss.omp_set_num_threads(1)
    x = np.fromfile(args.base, dtype="<f4").reshape(-1, args.dim)
    q = np.fromfile(args.queries, dtype="<f4").reshape(-1, args.dim)

    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    tiny = faiss.IndexFlatIP(args.dim)
    tiny.add(x[:1])
    try:
        simd = faiss.get_compile_options().strip()
    except AttributeError:
        simd = "unknown"
    meta = {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "simd": simd,
        "threads": 1,
        "n": int(x.shape[0]),
        "nq": int(q.shape[0]),
    }

    if not args.serve:
        times, top1, scores = time_queries(index, q, args.warmup)
        s = sorted(times)
        out = dict(
            meta,
            p50_ms=nearest_rank(s, 50),
            min_ms=s[0],
            p10_ms=nearest_rank(s, 10),
            p99_ms=nearest_rank(s, 99),
            mean_ms=sum(times) / len(times),
            call_overhead_p50_ms=overhead_p50(tiny, q, args.warmup),
            top1=top1,
            scores=scores,
        )
        print(json.dumps(out))
        return

    print(json.dumps(dict(meta, ready=True)), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["time"] and len(cmd) == 4:
            a, b, w = (int(v) for v in cmd[1:])
            for i in range(a, min(a + w, b)):
                index.search(np.ascontiguousarray(q[i : i + 1]), 1)
            times, top1, scores = time_queries(index, q[a:b], 0)
            print(json.dumps({"ms": times, "top1": top1, "scores": scores}), flush=True)
        elif cmd == ["overhead"]:
            p50 = overhead_p50(tiny, q, args.warmup)
            print(json.dumps({"call_overhead_p50_ms": p50}), flush=True)
        elif cmd == ["quit"]:
            break
        else:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


if __name__ == "__main__":
    main()
