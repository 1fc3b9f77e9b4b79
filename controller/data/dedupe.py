"""Exact and near-duplicate detection.

Exact duplicates share an `example_hash`. Near-duplicates are found with MinHash signatures over
word 3-gram shingles and LSH banding, then every candidate pair is confirmed with the exact
Jaccard similarity of the two shingle sets, so the threshold in the spec means what it says and
LSH only decides which pairs are worth comparing.

What is compared is the text of the user, assistant and tool turns. System prompts are left
out: most datasets share one system prompt, which would otherwise make every pair of short
examples look alike.

Clusters are the connected components of the "similar" graph. Within a cluster, examples are
kept in file order unless they are similar to one already kept (that one is named as the reason
it was dropped). A whole cluster, kept members and the chain that links them, goes to one side of
the split, so a test example never has a near-twin (or a near-twin's twin) in train.

The MinHash is plain numpy (no per-example Python loops over permutations): word ids are
crc32 of the lower-cased word (stable across runs and machines), shingles mix three ids into 32
bits, and each of the 64 permutations is three 32-bit vector operations and a segmented min.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

NUM_PERM = 64
SHINGLE_WORDS = 3
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
# Bytes that end a word become spaces: ASCII punctuation and whitespace. Non-ASCII bytes (UTF-8
# letters of other scripts) stay inside words. bytes.translate + split is ~3x faster than \w+.
_SPLIT_TABLE = bytes(c if (c in _WORD_BYTES or c >= 128) else 32 for c in range(256))
_SEED = 0x5EED_F70B  # fixed: signatures must be comparable across runs (leak checks, evaluation)


def example_text(example: dict[str, Any]) -> str:
    """The text near-duplicate detection compares: every non-system turn, in order."""
    parts = []
    for m in example.get("messages", ()):
        if m.get("role") in ("system", "developer"):
            continue
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            parts.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    return "\n".join(parts)


# ---------------------------------------------------------------- exact duplicates


@dataclass(frozen=True)
class ExactDuplicate:
    index: int
    first: int  # index of the first occurrence, which is kept


def exact_duplicates(hashes: Sequence[str]) -> list[ExactDuplicate]:
    """Every index whose hash was seen before, with the index it repeats. O(n) with a dict."""
    first: dict[str, int] = {}
    dups = []
    setdefault = first.setdefault
    for i, h in enumerate(hashes):
        j = setdefault(h, i)
        if j != i:
            dups.append(ExactDuplicate(i, j))
    return dups


# ---------------------------------------------------------------- MinHash


def words(text: str) -> list[bytes]:
    """Lower-cased words: runs of ASCII letters, digits and underscores, and of non-ASCII characters."""
    return text.lower().encode("utf-8").translate(_SPLIT_TABLE).split()


class _WordIds(dict):
    """word -> crc32, filled on first sight; lookups of known words stay in C (`map`)."""

    def __missing__(self, word: bytes) -> int:
        value = self[word] = zlib.crc32(word)
        return value


def shingle_set(text: str) -> set[tuple[bytes, ...]]:
    """The exact word 3-gram set of a text (what `jaccard` compares); a text shorter than three
    words is one shingle of what it has."""
    ws = words(text)
    k = SHINGLE_WORDS
    if len(ws) < k:
        return {tuple(ws)}
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the word 3-gram sets of two texts: the number the spec's
    nearDuplicateThreshold is compared with."""
    sa, sb = shingle_set(a), shingle_set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def _permutations(num_perm: int):
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(_SEED))
    a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def _block_signatures(texts: Sequence[str], ids: _WordIds, a, b):
    import numpy as np

    flat: list[int] = []
    lengths: list[int] = []
    table = _SPLIT_TABLE
    get = ids.__getitem__
    for text in texts:
        ws = text.lower().encode("utf-8").translate(table).split() or [b""]
        flat.extend(map(get, ws))
        lengths.append(len(ws))
    w = np.asarray(flat, dtype=np.uint64)
    wlen = np.asarray(lengths, dtype=np.int64)
    n, total = len(lengths), len(flat)
    wend = np.cumsum(wlen)
    end_of = np.repeat(wend, wlen)  # for each word position, where its text ends
    k = SHINGLE_WORDS
    pos = np.arange(total, dtype=np.int64)
    mixed = np.full(total, 0x9E3779B97F4A7C15, dtype=np.uint64)
    for j in range(k):
        shifted = np.empty(total, dtype=np.uint64)
        shifted[: total - j] = w[j:]
        shifted[total - j :] = 0
        word = np.where(pos + j < end_of, shifted, np.uint64(0x2545F491))
        mixed = (mixed ^ word) * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(29)
    # Keep shingles that start a full 3-gram, or the first word of a text shorter than that.
    first = wend - wlen
    index_in_text = pos - np.repeat(first, wlen)
    keep = index_in_text < np.repeat(np.maximum(wlen - (k - 1), 1), wlen)
    x = (mixed[keep] >> np.uint64(32)).astype(np.uint32)
    nsh = np.maximum(wlen - (k - 1), 1)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(nsh[:-1], out=starts[1:])
    sig = np.empty((n, len(a)), dtype=np.uint32)
    for p in range(len(a)):
        h = (x ^ b[p]) * a[p]
        h ^= h >> np.uint32(15)
        sig[:, p] = np.minimum.reduceat(h, starts)
    return sig


_SHARED_TEXTS: Sequence[str] = ()  # inherited by forked workers instead of being pickled
PARALLEL_MIN_TEXTS = 40_000


def _signature_block(start: int, block: int = 20_000):
    a, b = _permutations(NUM_PERM)
    return _block_signatures(_SHARED_TEXTS[start : start + block], _WordIds(), a, b)


def signatures(texts: Sequence[str], num_perm: int = NUM_PERM, block: int = 20_000, progress: bool = False, workers: int | None = None):
    """(n, num_perm) uint32 MinHash signatures of word 3-gram shingles.

    Each permutation is a 32-bit xor-multiply-xorshift of an already well-mixed shingle id, so
    one permutation costs three vector operations and a segmented min over all shingles; texts
    are processed in blocks to bound memory, over two forked processes for large inputs.
    Deterministic across runs, machines and worker counts."""
    import numpy as np

    global _SHARED_TEXTS
    a, b = _permutations(num_perm)
    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    starts = list(range(0, len(texts), block))
    if workers is None:
        from controller.data.check import default_workers

        workers = default_workers()
    if workers > 1 and num_perm == NUM_PERM and block == 20_000 and len(texts) >= PARALLEL_MIN_TEXTS:
        import multiprocessing

        _SHARED_TEXTS = texts
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.imap(_signature_block, starts)
                if progress:
                    from controller.data.progress import bar

                    parts = bar(parts, total=len(starts), desc="minhash", unit="block")
                for s, part in zip(starts, parts):
                    sig[s : s + block] = part
        finally:
            _SHARED_TEXTS = ()
        return sig
    ids = _WordIds()
    steps = starts
    if progress:
        from controller.data.progress import bar

        steps = bar(starts, total=len(starts), desc="minhash", unit="block")
    for s in steps:
        sig[s : s + block] = _block_signatures(texts[s : s + block], ids, a, b)
    return sig


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for the threshold: among the splits of `num_perm`, the one with the fewest
    expected false candidates below the threshold whose chance of missing a pair exactly at the
    threshold is under 1%. (Pairs above the threshold are found with even higher probability.)"""
    best = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p_hit = 1 - (1 - threshold**rows) ** bands
        if p_hit < 0.99:
            continue
        # Expected candidate rate integrated over similarities below the threshold.
        steps = 50
        fp = sum(1 - (1 - (threshold * s / steps) ** rows) ** bands for s in range(steps)) / steps
        if best is None or fp < best[0]:
            best = (fp, bands, rows)
    assert best is not None
    return best[1], best[2]


def candidate_pairs(sig, bands: int, rows: int, bucket_cap: int = 64) -> set[tuple[int, int]]:
    """Pairs (i < j) that share a band. In a bucket of more than `bucket_cap` members each
    member is paired with the `bucket_cap` members before it, which keeps a pathological bucket
    (thousands of templated examples) linear while still linking all of them into one cluster."""
    import numpy as np

    pairs: set[tuple[int, int]] = set()
    n = sig.shape[0]
    if n < 2:
        return pairs
    rng = np.random.Generator(np.random.PCG64(_SEED + 1))
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    for band in range(bands):
        cols = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = (cols * mult[None, :]).sum(axis=1, dtype=np.uint64)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        if same.size == 0:
            continue
        # Runs of equal keys: starts where the previous element differs.
        run_start = same[np.r_[True, same[1:] != same[:-1] + 1]]
        run_end = same[np.r_[same[1:] != same[:-1] + 1, True]] + 2
        for s, e in zip(run_start.tolist(), run_end.tolist()):
            members = sorted(order[s:e].tolist())
            for x in range(1, len(members)):
                j = members[x]
                for y in range(max(0, x - bucket_cap), x):
                    pairs.add((members[y], j))
    return pairs


# ---------------------------------------------------------------- clusters


@dataclass
class NearDuplicates:
    """The outcome of near-duplicate detection over n items (indices into the caller's list)."""

    threshold: float
    bands: int
    rows: int
    edges: list[tuple[int, int, float]] = field(default_factory=list)  # i < j, similarity >= threshold
    signatures: Any = field(default=None, repr=False)  # (n, NUM_PERM) uint32, reusable by the leak check
    clusters: list[list[int]] = field(default_factory=list)  # components of size >= 2, sorted
    dropped: dict[int, tuple[int, float]] = field(default_factory=dict)  # index -> (kept twin, similarity)

    def cluster_of(self) -> dict[int, int]:
        return {i: c for c, members in enumerate(self.clusters) for i in members}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicates(texts: Sequence[str], threshold: float, progress: bool = False, workers: int | None = None) -> NearDuplicates:
    """Find near-duplicate pairs (Jaccard of word 3-gram sets >= threshold) and cluster them."""
    import numpy as np

    bands, rows = lsh_params(threshold)
    result = NearDuplicates(threshold, bands, rows)
    n = len(texts)
    if n < 2:
        return result
    sig = signatures(texts, progress=progress, workers=workers)
    result.signatures = sig
    pairs = candidate_pairs(sig, bands, rows)
    if pairs:
        arr = np.array(sorted(pairs), dtype=np.int64)
        # Cheap screen on the signatures (3 standard deviations below the threshold), then the
        # exact Jaccard decides.
        est = np.empty(len(arr))
        for s in range(0, len(arr), 1 << 15):
            chunk = arr[s : s + (1 << 15)]
            est[s : s + len(chunk)] = (sig[chunk[:, 0]] == sig[chunk[:, 1]]).mean(axis=1)
        margin = 3 * np.sqrt(max(threshold * (1 - threshold), 0.01) / sig.shape[1])
        for (i, j), e in zip(arr.tolist(), est.tolist()):
            if e < threshold - margin:
                continue
            sim = jaccard(texts[i], texts[j])
            if sim >= threshold:
                result.edges.append((i, j, round(sim, 4)))
    uf = _UnionFind(n)
    for i, j, _ in result.edges:
        uf.union(i, j)
    groups: dict[int, list[int]] = {}
    for i, j, _ in result.edges:
        for x in (i, j):
            groups.setdefault(uf.find(x), [])
    for x in range(n):
        r = uf.find(x)
        if r in groups:
            groups[r].append(x)
    result.clusters = sorted(sorted(set(m)) for m in groups.values())
    # Keep in file order unless similar to something already kept.
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for i, j, sim in result.edges:
        neighbours.setdefault(j, []).append((i, sim))
        neighbours.setdefault(i, []).append((j, sim))
    for members in result.clusters:
        kept: set[int] = set()
        for x in members:
            twin = max(((y, s) for y, s in neighbours.get(x, ()) if y in kept), key=lambda t: (t[1], -t[0]), default=None)
            if twin is None:
                kept.add(x)
            else:
                result.dropped[x] = twin
    return result
