"""All-pairs Hamming search on packed hashes, and the synthetic-set de-duplication built on it.

Threshold semantics: two images are *near* under a hash kind when their Hamming distance is
``<= threshold`` for that kind (``DEFAULT_THRESHOLD`` = 10 of 64 bits); with several kinds, the
``rule`` says whether a pair is near when ANY kind is within its threshold or only when ALL kinds
are (same pair of images). Work is done in blocks of at most
``QUERY_CHUNK x REFERENCE_CHUNK`` pairs so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dermagan.errors import DermaganError

DEFAULT_THRESHOLD = 10
QUERY_CHUNK = 2048
REFERENCE_CHUNK = 10_000
REASONS = ("kept", "near_duplicate_synthetic", "memorised_train", "near_holdout")  # near_holdout: translations only
RULES = ("any", "all")


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned integer array (np.bitwise_count, or a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    counts = table[x.view(np.uint8)].reshape(*x.shape, x.itemsize)
    return counts.sum(axis=-1, dtype=np.uint8)


def _block_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint16 (len(a), len(b)) Hamming distances between two blocks of word arrays."""
    out = np.zeros((len(a), len(b)), dtype=np.uint16)
    for col in range(a.shape[1]):
        out += _popcount(a[:, col, None] ^ b[None, :, col])
    return out


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, B) packed hash sets with equal B, viewed as uint64 words when B % 8 == 0."""
    a, b = (np.ascontiguousarray(np.atleast_2d(x), dtype=np.uint8) for x in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DermaganError(f"packed hashes must be (N, bytes) of one width, got {a.shape} and {b.shape}")
    return (a.view(np.uint64), b.view(np.uint64)) if a.shape[1] % 8 == 0 else (a, b)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int32 (len(a), len(b)) Hamming distances between packed hashes (same as imagehash ``h1 - h2``)."""
    wa, wb = _check_pair(a, b)
    out = np.empty((len(wa), len(wb)), dtype=np.int32)
    for i in range(0, len(wa), QUERY_CHUNK):
        for j in range(0, len(wb), REFERENCE_CHUNK):
            out[i:i + QUERY_CHUNK, j:j + REFERENCE_CHUNK] = _block_distances(
                wa[i:i + QUERY_CHUNK], wb[j:j + REFERENCE_CHUNK])
    return out


def nearest_distances(query: np.ndarray, reference: np.ndarray, chunk: int = QUERY_CHUNK
                      ) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash: (smallest Hamming distance to any reference hash, its reference index).

    Ties go to the lowest reference index. With an empty reference the distance is
    ``n_bits + 1`` (never within a valid threshold) and the index is -1.
    """
    wq, wr = _check_pair(query, reference)
    n_bits = 8 * np.atleast_2d(query).shape[1]
    best = np.full(len(wq), n_bits + 1, dtype=np.int32)
    where = np.full(len(wq), -1, dtype=np.int64)
    for i in range(0, len(wq), chunk):
        rows = slice(i, i + chunk)
        for j in range(0, len(wr), REFERENCE_CHUNK):
            dist = _block_distances(wq[rows], wr[j:j + REFERENCE_CHUNK])
            arg = dist.argmin(axis=1)
            low = dist[np.arange(len(dist)), arg].astype(np.int32)
            better = low < best[rows]
            best[rows] = np.where(better, low, best[rows])
            where[rows] = np.where(better, arg + j, where[rows])
    return best, where


def _as_kinds(hashes, threshold) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Normalise (array, int) or (dict, dict) arguments to per-kind dicts."""
    if isinstance(hashes, dict):
        thresholds = threshold if isinstance(threshold, dict) else {k: threshold for k in hashes}
        return {k: hashes[k] for k in thresholds}, thresholds
    return {"hash": hashes}, {"hash": int(threshold)}


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise DermaganError(f"dedup rule must be one of {RULES}, got '{rule}'")
    return rule


def _near_block(query: dict, reference: dict, thresholds: dict, rule: str = "any") -> np.ndarray:
    """Boolean (len(query), len(reference)): near under ANY (or ALL) kinds (distance <= its threshold)."""
    near = None
    for kind, limit in thresholds.items():
        hit = _block_distances(*_check_pair(query[kind], reference[kind])) <= limit
        near = hit if near is None else (near | hit if rule == "any" else near & hit)
    return near


def near_mask(query: dict, reference: dict, thresholds: dict, rule: str = "any") -> np.ndarray:
    """Boolean per query row: near some reference row under ``rule``, in bounded blocks."""
    n = len(next(iter(query.values())))
    m = len(next(iter(reference.values())))
    out = np.zeros(n, dtype=bool)
    for start in range(0, n, QUERY_CHUNK):
        rows = np.arange(start, min(start + QUERY_CHUNK, n))
        for ref_start in range(0, m, REFERENCE_CHUNK):
            refs = np.arange(ref_start, min(ref_start + REFERENCE_CHUNK, m))
            out[rows] |= _near_block(_sub(query, rows), _sub(reference, refs), thresholds, rule).any(axis=1)
    return out


def _sub(hashes: dict, index) -> dict:
    """The same rows (index array) of every kind."""
    return {k: v[index] for k, v in hashes.items()}


def near_duplicate_groups(hashes, threshold=DEFAULT_THRESHOLD, candidates: np.ndarray | None = None,
                          chunk: int = QUERY_CHUNK, rule: str = "any") -> np.ndarray:
    """Boolean keep-mask: greedy in order, an image is dropped if it is near an earlier KEPT image.

    ``hashes``: packed (N, B) array with an int ``threshold``, or dicts kind -> array / threshold
    (near under ANY kind, or ALL with ``rule="all"``). ``candidates``: optional boolean mask of images that may be kept at
    all; the others are dropped and never cause drops. Each block is compared against all kept
    images before it in one vectorised call; only the within-block greedy pass loops.
    """
    kinds, thresholds = _as_kinds(hashes, threshold)
    check_rule(rule)
    n = len(next(iter(kinds.values())))
    keep = np.ones(n, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool).copy()
    for start in range(0, n, chunk):
        block = np.arange(start, min(start + chunk, n))
        block = block[keep[block]]
        earlier = np.flatnonzero(keep[:start])
        for j in range(0, len(earlier), REFERENCE_CHUNK):
            if len(block):
                ref = _sub(kinds, earlier[j:j + REFERENCE_CHUNK])
                hit = _near_block(_sub(kinds, block), ref, thresholds, rule).any(axis=1)
                keep[block[hit]] = False
                block = block[~hit]
        near = _near_block(_sub(kinds, block), _sub(kinds, block), thresholds, rule)
        alive = np.ones(len(block), dtype=bool)
        for i in range(len(block)):
            if alive[i]:
                alive[i + 1:] &= ~near[i, i + 1:]
        keep[block[~alive]] = False
    return keep


@dataclass
class DedupResult:
    """Outcome of :func:`deduplicate`, one entry per synthetic image (in input order).

    ``reason`` is "memorised_train" (near a real train image; checked first),
    "near_duplicate_synthetic" (near an earlier kept synthetic image) or "kept".
    Train/holdout distances and indices are per hash kind; indices are -1 for an empty set.
    ``holdout_near_indices`` lists ALL synthetic images near any holdout (val/test) image,
    kept or not: it is reported, never used to drop.
    """

    keep: np.ndarray
    reason: np.ndarray
    thresholds: dict[str, int]
    rule: str = "any"
    train_distance: dict[str, np.ndarray] = field(default_factory=dict)
    train_index: dict[str, np.ndarray] = field(default_factory=dict)
    holdout_distance: dict[str, np.ndarray] = field(default_factory=dict)
    holdout_near_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def holdout_near_count(self) -> int:
        """Synthetic images within threshold of any holdout image (kept or not)."""
        return int(len(self.holdout_near_indices))

    def counts(self) -> dict[str, int]:
        """reason -> number of synthetic images, every reason present."""
        return {r: int((self.reason == r).sum()) for r in REASONS}


def _near_reference(query: dict, reference: dict, thresholds: dict, rule: str) -> tuple[np.ndarray, dict, dict]:
    """(near mask under ``rule``, nearest distance per kind, nearest index per kind) of query vs reference."""
    dist, index = {}, {}
    for kind in thresholds:
        dist[kind], index[kind] = nearest_distances(query[kind], reference[kind])
    if rule == "any" or len(thresholds) == 1:
        near = np.logical_or.reduce([dist[k] <= limit for k, limit in thresholds.items()])
    elif len(next(iter(reference.values()))) == 0:
        near = np.zeros(len(next(iter(query.values()))), dtype=bool)
    else:  # ALL kinds close to the SAME reference image: needs the pairwise test
        near = near_mask(query, reference, thresholds, rule)
    return near, dist, index


def deduplicate(synthetic: dict[str, np.ndarray], real_train: dict[str, np.ndarray],
                holdout: dict[str, np.ndarray], thresholds: dict[str, int] | None = None,
                rule: str = "any") -> DedupResult:
    """Decide which synthetic images to keep; every argument maps hash kind -> packed hashes.

    A synthetic image is near another image when ANY (``rule="all"``: every) kind's Hamming
    distance is ``<=`` that kind's threshold (default ``DEFAULT_THRESHOLD`` = 10 of 64 bits for every synthetic kind).
    Memorisation of real train images is checked first, then greedy in-set de-duplication among
    the rest; closeness to ``holdout`` (val + test) is only counted.
    """
    thresholds = {k: DEFAULT_THRESHOLD for k in synthetic} if thresholds is None else dict(thresholds)
    if not thresholds:
        raise DermaganError("deduplicate needs at least one hash kind")
    check_rule(rule)
    for name, hashes in (("synthetic", synthetic), ("real_train", real_train), ("holdout", holdout)):
        if missing := sorted(set(thresholds) - set(hashes)):
            raise DermaganError(f"{name} hashes lack kind(s) {missing}")
    for kind, limit in thresholds.items():
        if not 0 <= limit <= 8 * np.atleast_2d(synthetic[kind]).shape[1]:
            raise DermaganError(f"threshold for {kind} must be within 0..n_bits, got {limit}")
    memorised, train_dist, train_idx = _near_reference(synthetic, real_train, thresholds, rule)
    keep = near_duplicate_groups(synthetic, thresholds, candidates=~memorised, rule=rule)
    reason = np.where(memorised, "memorised_train", np.where(keep, "kept", "near_duplicate_synthetic"))
    held, hold_dist, _ = _near_reference(synthetic, holdout, thresholds, rule)
    return DedupResult(keep=keep, reason=reason, thresholds=thresholds, rule=rule, train_distance=train_dist,
                       train_index=train_idx, holdout_distance=hold_dist,
                       holdout_near_indices=np.flatnonzero(held))
