"""MinHash signatures, LSH banding, union-find clustering.

A signature holds, for each of `num_perm` hash functions h_i(x) = (a_i x + b_i mod 2^64) >> 32
(multiply-shift, a_i odd), the minimum over a document's shingle hashes. Two documents agree on
one entry with probability equal to the Jaccard similarity of their shingle sets. LSH cuts a
signature into `bands` bands of `rows` entries; documents that agree on a whole band become
candidate pairs, which happens with probability 1 - (1 - s^rows)^bands for similarity s."""

from collections.abc import Callable

import numpy as np

from .text import mix64

_CHUNK_ROWS = 8192  # shingles per block of the (shingles, num_perm) product: bounds memory


class MinHasher:
    """Signatures of shingle-hash arrays with `num_perm` permutations drawn from `seed`."""

    def __init__(self, num_perm: int, seed: int = 1):
        rng = np.random.Generator(np.random.PCG64(seed))
        self.num_perm = num_perm
        self.a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """(len(shingle_sets), num_perm) uint32; a set without shingles gets all 0xFFFFFFFF."""
        sig = np.full((len(shingle_sets), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
        if lengths.sum() == 0:
            return sig
        values = np.concatenate(shingle_sets)
        owner = np.repeat(np.arange(len(shingle_sets)), lengths)
        for start in range(0, len(values), _CHUNK_ROWS):
            block, docs = values[start:start + _CHUNK_ROWS], owner[start:start + _CHUNK_ROWS]
            hashed = ((block[:, None] * self.a + self.b) >> np.uint64(32)).astype(np.uint32)  # (S, P)
            firsts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
            rows = docs[firsts]
            sig[rows] = np.minimum(sig[rows], np.minimum.reduceat(hashed, firsts, axis=0))
        return sig


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity at which a pair becomes a candidate with probability about 1/2: (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - similarity ** rows) ** bands


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: one hash per band of each signature; equal bands give equal keys."""
    keys = np.zeros((len(sig), bands), dtype=np.uint64)
    wide = sig.astype(np.uint64)
    for r in range(rows):
        keys = mix64(keys + wide[:, r:bands * rows:rows] + np.uint64(r + 1))
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """(M, 2) int64 sorted unique pairs (i < j) of rows of `keys` (N, bands) that share a key in
    some band."""
    found = []
    for band in keys.T:
        order = np.argsort(band, kind="stable")
        ordered = band[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        sizes = np.diff(np.r_[starts, len(ordered)])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = np.sort(order[start:start + size])
            i, j = np.triu_indices(size, 1)
            found.append(members[i] * len(keys) + members[j])
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // len(keys), codes % len(keys)], axis=1)


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: int, y: int) -> bool:
        """Joins the sets of x and y; False when they were already one."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return False
        self.parent[max(rx, ry)] = min(rx, ry)
        return True


def verified_clusters(pairs: np.ndarray, n: int, similarity: Callable[[int, int], float],
                      threshold: float) -> tuple[np.ndarray, list[tuple[int, int, float]], int]:
    """Union-find over the candidate `pairs` (sorted (i, j) rows over 0..n-1) whose `similarity`
    reaches `threshold`; a pair already in one cluster is not compared again (it would change
    nothing). -> (root of each item, the smallest index of its cluster; the verified pairs with
    their similarity; the number of pairs rejected)."""
    clusters, verified, rejected = UnionFind(n), [], 0
    for i, j in pairs.tolist():
        if clusters.find(i) == clusters.find(j):
            continue
        value = similarity(i, j)
        if value >= threshold:
            clusters.union(i, j)
            verified.append((i, j, value))
        else:
            rejected += 1
    return np.array([clusters.find(i) for i in range(n)], dtype=np.int64), verified, rejected
