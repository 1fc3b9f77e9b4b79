"""Serving benchmarks, all measured in the same run:

1. Retrieval latency p50/p99 per query at 10k and 100k chunks, BM25 (bm25s) and dense
   (all-MiniLM-L6-v2 query encoding + dot product + top-k). Target: BM25 p99 <= 5 ms at 100k.
   Everything runs with torch on one thread (see main()).
   The chunks are synthetic (Zipf-distributed words, fixed seed) so the run needs no data set.
   Dense: encoding 100k chunks with MiniLM takes many minutes on 2 CPU cores, so the corpus side
   uses random unit vectors of the same shape (384-d float32); the per-query work measured (encode
   the real query text, matrix-vector product over all rows, top-k) is the same as with real
   embeddings. The encoder's measured throughput on real chunks is printed, to say what a real
   100k index build would cost.
2. Server overhead: a tiny model trained here by the real trainer, answered through the HTTP
   server (validation, retrieval, chat template, generation, JSON) vs `model.generate` on the same
   final prompt ids in the same process. Target: overhead <= 10%.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import percentile, report

SIZES = (10_000, 100_000)
QUERIES = 300
TOP_K = 4
BM25_P99_TARGET_MS = 5.0
OVERHEAD_TARGET = 0.10


def _synthetic_chunks(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30_000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    out = []
    for _ in range(n):
        out.append(" ".join(rng.choices(vocab, weights=weights, k=rng.randint(40, 90))))
    return out


def _queries(chunks: list[str], n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    qs = []
    for _ in range(n):
        words = rng.choice(chunks).split()
        qs.append(" ".join(rng.sample(words, min(5, len(words)))))
    return qs


def _latencies(fn, queries: list[str], repeat: int = 3) -> tuple[list[float], list[float]]:
    """(first-pass latency per query, best of `repeat` per query), in ms. The best-of figure
    removes preemption by other processes on a shared machine (a query's own cost is its fastest
    run); both are reported."""
    for q in queries[:20]:
        fn(q)  # warm caches
    first, best = [], []
    for q in queries:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn(q)
            times.append((time.perf_counter() - started) * 1000)
        first.append(times[0])
        best.append(min(times))
    return first, best


def bench_retrieval() -> list[tuple[str, str]]:
    import numpy as np

    from controller.serve.embed import DIM, Encoder
    from controller.serve.retrievers import BM25Retriever, DenseRetriever

    rows = []
    chunks_all = _synthetic_chunks(max(SIZES))
    encoder = Encoder()
    sample = chunks_all[:128]
    started = time.perf_counter()
    encoder.encode(sample)
    per_second = len(sample) / (time.perf_counter() - started)
    rows.append(("dense encoder throughput", f"{per_second:.1f} chunks/s on the synthetic 40-90-word chunks "
                                             f"(a real 100k index build: ~{100_000 / per_second / 60:.0f} min)"))
    bm25_p99_100k = None
    for n in SIZES:
        chunks = chunks_all[:n]
        queries = _queries(chunks, QUERIES)
        started = time.perf_counter()
        bm25 = BM25Retriever.build(chunks)
        build = time.perf_counter() - started
        lat, best = _latencies(lambda q: bm25.search(q, TOP_K), queries)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        if n == max(SIZES):
            bm25_p99_100k = (p99, percentile(best, 99))
        rows.append((f"bm25  {n:>7,} chunks", f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  | best-of-3 per query: p50 "
                                              f"{percentile(best, 50):6.2f} ms  p99 {percentile(best, 99):6.2f} ms  "
                                              f"(index build {build:.1f}s)"))
        rng = np.random.default_rng(0)
        emb = rng.standard_normal((n, DIM), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        dense = DenseRetriever(emb, encoder)
        lat, best = _latencies(lambda q: dense.search(q, TOP_K), queries[:100])
        rows.append((f"dense {n:>7,} chunks", f"p50 {percentile(lat, 50):6.2f} ms  p99 {percentile(lat, 99):6.2f} ms  | "
                                              f"best-of-3: p50 {percentile(best, 50):6.2f} ms  p99 {percentile(best, 99):6.2f} ms"
                                              "  (random unit corpus vectors, see docstring; real query encoding)"))
    for label, value in zip(("first pass", "best-of-3"), bm25_p99_100k):
        verdict = "OK" if value <= BM25_P99_TARGET_MS else "MISSED"
        rows.append((f"bm25 p99 at 100k, {label}", f"{value:.2f} ms / target {BM25_P99_TARGET_MS} ms = "
                                                   f"{value / BM25_P99_TARGET_MS:.2f}x {verdict}"))
    return rows


def _train_tiny_run(root: Path) -> Path:
    from controller.tiny.model import init_tiny_model
    from controller.tiny.task import write_task

    base = init_tiny_model(root / "base")
    train, test = write_task(root / "data", n_train=32, n_test=8)
    run_id = "beec0000000001"
    out = root / "store" / "bench" / run_id
    rc = {"runId": run_id, "specName": "bench", "baseModel": {"uri": str(base)}, "method": {"type": "lora", "r": 4, "alpha": 8},
          "training": {"epochs": 1, "batchSize": 16, "maxSeqLength": 128}, "device": "cpu",
          "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
          "outputDir": str(out), "checkpointDir": str(root / "ckpt")}
    (root / "run.json").write_text(json.dumps(rc))
    proc = subprocess.run([sys.executable, "-m", "controller.train", "--config", str(root / "run.json")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"training the bench run failed: {proc.stderr[-2000:]}")
    return out


def bench_server_overhead(rounds: int = 60, max_tokens: int = 32) -> list[tuple[str, str]]:
    import statistics

    import torch

    from controller.serve.config import ServeConfig
    from controller.serve.server import RagServer
    from controller.serve.validation import parse_chat_request

    with tempfile.TemporaryDirectory(prefix="ftops-bench-serve-") as tmp:
        root = Path(tmp)
        run_dir = _train_tiny_run(root)
        corpus = root / "kb"
        corpus.mkdir()
        for i, text in enumerate(_synthetic_chunks(200, seed=3)):
            (corpus / f"doc{i:03d}.md").write_text(text[:300] + "\n")
        srv = RagServer(ServeConfig(run_dir=str(run_dir), model_name="bench", corpus_dir=str(corpus), retriever="bm25",
                                    top_k=2, max_tokens=max_tokens, port=0, index_cache=str(root / "idx")))
        srv.bind()
        srv.load()
        srv.start(load=False)
        question = _queries(_synthetic_chunks(200, seed=3), 1)[0]
        body = json.dumps({"model": "bench", "max_tokens": max_tokens,
                           "messages": [{"role": "user", "content": question}]}).encode()
        request = parse_chat_request(body, max_tokens)
        ids, _hits = srv.prepare(request)  # the exact prompt the server builds (context included)
        model = srv.model
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)

        def direct() -> float:
            inputs = torch.tensor([ids])
            started = time.perf_counter()
            with torch.inference_mode():
                model.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_tokens,
                                     do_sample=False, eos_token_id=model.eos_ids, pad_token_id=model.pad_id)
            return time.perf_counter() - started

        def served() -> float:
            started = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != 200:
                raise RuntimeError(f"server answered {resp.status}: {data[:200]!r}")
            return elapsed

        for _ in range(5):
            direct(), served()
        d, s = [], []
        for _ in range(rounds):  # interleaved, so machine noise hits both alike
            d.append(direct())
            s.append(served())
        conn.close()
        tokens = json.loads(_post(srv.port, body))["usage"]["completion_tokens"]
        srv.shutdown()
    dm, sm = statistics.median(d), statistics.median(s)
    dmin, smin = min(d), min(s)
    rows = [
        ("model.generate direct", f"median {dm * 1000:7.2f} ms  min {dmin * 1000:7.2f} ms  ({tokens} tokens, prompt "
                                  f"{len(ids)} tokens)"),
        ("through the HTTP server", f"median {sm * 1000:7.2f} ms  min {smin * 1000:7.2f} ms  (validation, retrieval, "
                                    "template, generate, JSON, HTTP keep-alive)"),
    ]
    for label, ratio in (("median", sm / dm), ("min", smin / dmin)):
        overhead = ratio - 1
        rows.append((f"server / direct ({label})", f"{ratio:.3f}x  overhead {overhead * 100:+.1f}% vs target <= "
                                                   f"{OVERHEAD_TARGET * 100:.0f}% {'OK' if overhead <= OVERHEAD_TARGET else 'MISSED'}"))
    return rows


def _post(port: int, body: bytes) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    data = conn.getresponse().read()
    conn.close()
    return data


def main() -> None:
    import torch

    # One intra-op thread: on a small shared machine torch's thread pool spins against other
    # processes (measured: MiniLM query encoding 25 ms with 1 thread, 200-900 ms with 2 under load).
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report("retrieval latency per query (top-4)", bench_retrieval())
    report("server overhead (same run, same prompt)", bench_server_overhead())


if __name__ == "__main__":
    main()
