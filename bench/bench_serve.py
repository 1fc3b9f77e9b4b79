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
2. Serving load: a tiny model trained here by the real trainer, served by `ftops serve` (the
   gateway and the embedded engine, one process, as the local deployer runs it); 1, 4, 8 and 16
   concurrent clients through the official openai SDK, each sending requests back to back:
   throughput and p50/p99 latency against the one-at-a-time baseline. Target: >= 3x the
   sequential throughput at 8 clients, 0 errors.
3. Gateway overhead: the same request through the gateway vs straight to the engine with the
   exact messages the gateway builds (retrieved context included), interleaved, by median.
   Target: <= 10%.
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
LOAD_TARGET = 3.0


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


class _ServingProcess:
    """`ftops serve --config serve.json` (gateway + embedded engine, one process) on OS-chosen
    ports, as the local deployer runs it; stopped with SIGTERM."""

    def __init__(self, root: Path, run_dir: Path, corpus: Path, max_tokens: int) -> None:
        from controller.serve.config import ServeConfig, write_config

        endpoint = root / "endpoint.json"
        config = ServeConfig(run_dir=str(run_dir), model_name="bench", corpus_dir=str(corpus), retriever="bm25", top_k=2,
                             max_tokens=max_tokens, port=0, index_cache=str(root / "idx"), endpoint_file=str(endpoint))
        write_config(config, root / "serve.json")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FTOPS_ENGINE_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        self.log = (root / "serve.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--config", str(root / "serve.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if endpoint.is_file():
                ports = json.loads(endpoint.read_text())["ports"]
                self.gateway = f"http://127.0.0.1:{ports['gateway']}"
                self.engine = f"http://127.0.0.1:{ports['engine']}"
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", ports["gateway"], timeout=5)
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the serving process did not get ready: {(root / 'serve.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _load(client, messages: list[dict], clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another through the SDK."""
    import concurrent.futures as cf

    latencies: list[float] = []
    errors = 0
    tokens = 0

    def worker(_i: int) -> tuple[list[float], int, int]:
        lat, err, tok = [], 0, 0
        for _ in range(per_client):
            started = time.perf_counter()
            try:
                resp = client.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens,
                                                      temperature=0)
                tok += resp.usage.completion_tokens
            except Exception:  # noqa: BLE001 - counted, reported
                err += 1
            lat.append(time.perf_counter() - started)
        return lat, err, tok

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        for lat, err, tok in pool.map(worker, range(clients)):
            latencies += lat
            errors += err
            tokens += tok
    wall = time.perf_counter() - started
    return {"rps": len(latencies) / wall, "tps": tokens / wall, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "errors": errors, "n": len(latencies)}


def bench_serving(max_tokens: int = 32) -> list[tuple[str, str]]:
    """Load through the gateway at 1/4/8/16 concurrent openai-SDK clients against the one-at-a-time
    baseline, and the gateway's overhead over calling the engine directly, in one serving process."""
    import asyncio
    import statistics

    from openai import OpenAI

    from controller.serve.gateway import Gateway, GatewayConfig, Route
    from controller.serve.prompt import with_context

    with tempfile.TemporaryDirectory(prefix="ftops-bench-serve-") as tmp:
        root = Path(tmp)
        run_dir = _train_tiny_run(root)
        corpus = root / "kb"
        corpus.mkdir()
        for i, text in enumerate(_synthetic_chunks(200, seed=3)):
            (corpus / f"doc{i:03d}.md").write_text(text[:120] + "\n")  # two fit the 512-token context
        question = _queries(_synthetic_chunks(200, seed=3), 1)[0]
        messages = [{"role": "user", "content": question}]
        serving = _ServingProcess(root, run_dir, corpus, max_tokens)
        try:
            gw = OpenAI(base_url=f"{serving.gateway}/v1", api_key="-", max_retries=0, timeout=120)
            engine = OpenAI(base_url=f"{serving.engine}/v1", api_key="-", max_retries=0, timeout=120)
            # The exact messages the gateway sends the engine (same index, same prompt builder).
            offline = Gateway(GatewayConfig("bench", (Route("x", "x"),), (), corpus_dir=str(corpus), top_k=2,
                                            index_cache=str(root / "idx")))
            offline.load_index()
            engine_messages = with_context(messages, asyncio.run(offline._hits(question)))
            run_id = json.loads((run_dir / "manifest.json").read_text())["runId"]
            for _ in range(3):
                _load(gw, messages, 1, 2, max_tokens)
            rows = []
            results = {n: _load(gw, messages, n, max(4, 32 // n), max_tokens) for n in (1, 4, 8, 16)}
            base = results[1]["rps"]
            for n, r in results.items():
                rows.append((f"{n:>2} concurrent client(s)", f"{r['rps']:6.2f} req/s  {r['tps']:7.1f} tok/s  p50 "
                                                            f"{r['p50'] * 1000:7.1f} ms  p99 {r['p99'] * 1000:7.1f} ms  "
                                                            f"{r['rps'] / base:5.2f}x sequential  errors {r['errors']}/{r['n']}"))
            ratio8 = results[8]["rps"] / base
            ok = ratio8 >= LOAD_TARGET and results[8]["errors"] == 0
            rows.append(("8 clients vs sequential", f"{ratio8:.2f}x vs target >= {LOAD_TARGET:.0f}x with 0 errors "
                                                    f"{'OK' if ok else 'MISSED'}"))

            def direct() -> float:
                started = time.perf_counter()
                engine.chat.completions.create(model=run_id, messages=engine_messages, max_tokens=max_tokens, temperature=0)
                return time.perf_counter() - started

            def through() -> float:
                started = time.perf_counter()
                gw.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens, temperature=0)
                return time.perf_counter() - started

            d, g = [], []
            for _ in range(40):  # interleaved, so machine noise hits both alike
                d.append(direct())
                g.append(through())
        finally:
            serving.stop()
    dm, gm = statistics.median(d), statistics.median(g)
    overhead = gm / dm - 1
    rows += [
        ("engine directly (SDK)", f"median {dm * 1000:7.2f} ms  min {min(d) * 1000:7.2f} ms  (the gateway's exact prompt)"),
        ("through the gateway (SDK)", f"median {gm * 1000:7.2f} ms  min {min(g) * 1000:7.2f} ms  (auth, validation, "
                                      "retrieval, prompt, routing, one more HTTP hop)"),
        ("gateway / engine (median)", f"{gm / dm:.3f}x  overhead {overhead * 100:+.1f}% vs target <= "
                                      f"{OVERHEAD_TARGET * 100:.0f}% {'OK' if overhead <= OVERHEAD_TARGET else 'MISSED'}"),
    ]
    return rows


def main() -> None:
    import torch

    # One intra-op thread: on a small shared machine torch's thread pool spins against other
    # processes (measured: MiniLM query encoding 25 ms with 1 thread, 200-900 ms with 2 under load).
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report("retrieval latency per query (top-4)", bench_retrieval())
    report("serving: gateway + embedded engine, openai SDK clients (same run, same process)", bench_serving())


if __name__ == "__main__":
    main()
