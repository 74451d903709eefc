"""Perceptual-hash de-duplication of synthetic images against themselves, real train and holdout images.

Hashes equal imagehash 4.3.2 bit for bit and are stored packed (uint8, one row per image); an
image pair is *near* when the Hamming distance is ``<= threshold`` (default 10 of 64 bits) for
ANY hash kind.
"""

from dermagan.dedup.hashing import (
    HASH_KINDS,
    hash_images,
    hashes_of,
    phash_batch,
    to_imagehash_hex,
    unpack_bits,
    whash_batch,
)
from dermagan.dedup.search import (
    DEFAULT_THRESHOLD,
    REASONS,
    DedupResult,
    deduplicate,
    hamming_matrix,
    near_duplicate_groups,
    nearest_distances,
)

__all__ = [
    "DEFAULT_THRESHOLD", "HASH_KINDS", "REASONS", "DedupResult", "deduplicate", "hamming_matrix",
    "hash_images", "hashes_of", "near_duplicate_groups", "nearest_distances", "phash_batch", "to_imagehash_hex",
    "unpack_bits", "whash_batch",
]
