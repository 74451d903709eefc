"""Perceptual-hash dedup: hashes equal imagehash, Hamming search equals brute force, planted cases."""

import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from dermagan.dedup import (
    deduplicate,
    hamming_matrix,
    hash_images,
    near_duplicate_groups,
    nearest_distances,
    phash_batch,
    to_imagehash_hex,
    unpack_bits,
    whash_batch,
)
from dermagan.dedup import search
from dermagan.errors import DermaganError

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/ham10000"
KINDS = ("phash", "whash")


def smooth_image(rng: np.random.Generator, height: int, width: int, grid: int = 6) -> np.ndarray:
    """A lesion-like RGB uint8 image: a random coarse grid upsampled bicubically, plus mild noise."""
    coarse = rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=float)
    return np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)


def varied_images() -> list[np.ndarray]:
    """~30 images: noise and smooth textures at 64x64 and 150x112, gradients, constants, a checkerboard."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    images += [smooth_image(rng, 64, 64) for _ in range(6)]
    images += [rng.integers(0, 256, (112, 150, 3), dtype=np.uint8) for _ in range(5)]
    images += [smooth_image(rng, 112, 150, grid=g) for g in (3, 5, 8, 12, 20)]
    ramp = np.linspace(0, 255, 64).astype(np.uint8)
    images += [np.repeat(np.tile(ramp, (64, 1))[..., None], 3, axis=2),
               np.repeat(np.tile(ramp[:, None], (1, 150))[..., None], 3, axis=2)]
    images += [np.full((64, 64, 3), v, np.uint8) for v in (0, 128, 255)]
    images += [np.full((112, 150, 3), 200, np.uint8)]
    checker = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    images += [np.repeat(checker[..., None], 3, axis=2), checker]  # RGB and greyscale (H, W)
    return images


def reference_hex(image: np.ndarray, kind: str, hash_size: int) -> str:
    """imagehash's own hex string for one image."""
    pil = Image.fromarray(image)
    if kind == "phash":
        return str(imagehash.phash(pil, hash_size))
    return str(imagehash.whash(pil, hash_size, image_scale=64))


@pytest.mark.parametrize("kind,hash_size", [("phash", 8), ("phash", 16), ("phash", 6),
                                            ("whash", 8), ("whash", 16)])
def test_hashes_equal_imagehash(kind, hash_size):
    images = varied_images()
    packed = hash_images(images, kind, hash_size)
    assert packed.shape == (len(images), (hash_size * hash_size + 7) // 8) and packed.dtype == np.uint8
    ours = [to_imagehash_hex(row, hash_size) for row in packed]
    assert ours == [reference_hex(im, kind, hash_size) for im in images]


def test_stack_list_and_pil_inputs_agree():
    rng = np.random.default_rng(1)
    stack = np.stack([smooth_image(rng, 64, 64) for _ in range(5)])
    pils = [Image.fromarray(im) for im in stack]
    for fn in (phash_batch, whash_batch):
        assert np.array_equal(fn(stack), fn(list(stack)))
        assert np.array_equal(fn(stack), fn(pils))
    assert phash_batch(stack[:0]).shape == (0, 8)
    ref = imagehash.whash(pils[0], image_scale=64)
    assert np.array_equal(unpack_bits(whash_batch(stack[:1]))[0], ref.hash)


def test_bad_arguments_raise():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(DermaganError):
        hash_images(images, "ahash")
    with pytest.raises(DermaganError):
        whash_batch(images, image_scale=48)
    with pytest.raises(DermaganError):
        phash_batch(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(DermaganError):
        hamming_matrix(np.zeros((2, 8), np.uint8), np.zeros((2, 4), np.uint8))


def test_hamming_matrix_equals_imagehash_difference():
    images = varied_images()[:14]
    for kind, fn in (("phash", imagehash.phash), ("whash", lambda im: imagehash.whash(im, image_scale=64))):
        refs = [fn(Image.fromarray(im)) for im in images]
        expected = np.array([[h1 - h2 for h2 in refs] for h1 in refs])
        packed = hash_images(images, kind)
        assert np.array_equal(hamming_matrix(packed, packed), expected)


@pytest.mark.parametrize("n_bytes", [8, 32, 5])
def test_hamming_and_nearest_equal_brute_force(monkeypatch, n_bytes):
    monkeypatch.setattr(search, "QUERY_CHUNK", 37)
    monkeypatch.setattr(search, "REFERENCE_CHUNK", 53)
    rng = np.random.default_rng(n_bytes)
    query = rng.integers(0, 256, (150, n_bytes), dtype=np.uint8)
    reference = rng.integers(0, 256, (220, n_bytes), dtype=np.uint8)
    reference[::7] &= 0x0F  # many ties and low distances
    query[::5] &= 0x0F
    bits_q, bits_r = np.unpackbits(query, axis=1), np.unpackbits(reference, axis=1)
    brute = (bits_q[:, None, :] != bits_r[None, :, :]).sum(-1)
    assert np.array_equal(hamming_matrix(query, reference), brute)
    dist, index = nearest_distances(query, reference, chunk=29)
    assert np.array_equal(dist, brute.min(1)) and np.array_equal(index, brute.argmin(1))
    empty_dist, empty_index = nearest_distances(query, reference[:0])
    assert (empty_dist == 8 * n_bytes + 1).all() and (empty_index == -1).all()


def greedy_reference(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Plain-loop greedy: drop an image within threshold of an earlier kept image."""
    bits = np.unpackbits(hashes, axis=1)
    kept: list[int] = []
    for i in range(len(hashes)):
        if all((bits[i] != bits[k]).sum() > threshold for k in kept):
            kept.append(i)
    return np.isin(np.arange(len(hashes)), kept)


def test_near_duplicate_groups_equals_plain_greedy(monkeypatch):
    monkeypatch.setattr(search, "REFERENCE_CHUNK", 31)
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    bits = np.unpackbits(centres[rng.integers(0, 40, 400)], axis=1)
    flips = rng.random(bits.shape) < 0.08  # ~5 bits per copy: chains of near duplicates
    hashes = np.packbits(bits ^ flips, axis=1)
    for threshold in (0, 6, 10):
        expected = greedy_reference(hashes, threshold)
        assert np.array_equal(near_duplicate_groups(hashes, threshold, chunk=23), expected)
    assert 40 <= near_duplicate_groups(hashes, 10).sum() < 200


def planted_sets():
    """Real train / holdout images (150x112) and a synthetic 64x64 set with planted near copies."""
    rng = np.random.default_rng(11)
    train = [smooth_image(rng, 112, 150) for _ in range(25)]
    holdout = [smooth_image(rng, 112, 150) for _ in range(10)]
    synthetic = [smooth_image(rng, 64, 64) for _ in range(30)]
    noisy = np.clip(synthetic[0] + rng.normal(0, 6, synthetic[0].shape), 0, 255).astype(np.uint8)
    shifted = np.roll(synthetic[1], 1, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(train[3]).resize((64, 64), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=80)
    train_copy = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    holdout_copy = np.asarray(Image.fromarray(holdout[2]).resize((64, 64), Image.Resampling.BICUBIC))
    synthetic += [noisy, shifted, train_copy, holdout_copy]  # indices 30, 31, 32, 33
    return train, holdout, synthetic


def hashes_by_kind(images) -> dict[str, np.ndarray]:
    """kind -> packed hashes."""
    return {kind: hash_images(images, kind) for kind in KINDS}


def test_deduplicate_flags_planted_copies():
    train, holdout, synthetic = planted_sets()
    result = deduplicate(hashes_by_kind(synthetic), hashes_by_kind(train), hashes_by_kind(holdout),
                         {"phash": 10, "whash": 10})
    assert list(result.reason[30:32]) == ["near_duplicate_synthetic"] * 2
    assert result.reason[32] == "memorised_train"
    assert all(result.train_index[kind][32] == 3 for kind in KINDS)
    assert result.holdout_near_indices.tolist() == [33] and result.holdout_near_count == 1
    assert result.keep[:30].all() and result.keep[33] and not result.keep[30:33].any()
    assert result.counts() == {"kept": 31, "near_duplicate_synthetic": 2, "memorised_train": 1,
                               "near_holdout": 0}
    assert all(len(result.train_distance[kind]) == 34 for kind in KINDS)


def test_memorisation_checked_before_synthetic_duplicates():
    train, holdout, synthetic = planted_sets()
    synthetic = [train[5], train[5], synthetic[0]]
    result = deduplicate(hashes_by_kind(synthetic), hashes_by_kind(train), hashes_by_kind(holdout[:0]))
    assert result.reason.tolist() == ["memorised_train", "memorised_train", "kept"]
    assert result.holdout_near_count == 0 and (result.holdout_distance["phash"] == 65).all()


def test_distinct_images_all_kept_and_bad_thresholds_raise():
    rng = np.random.default_rng(5)
    synthetic = hashes_by_kind([smooth_image(rng, 64, 64) for _ in range(40)])
    train = hashes_by_kind([smooth_image(rng, 112, 150) for _ in range(40)])
    result = deduplicate(synthetic, train, train)
    assert result.keep.all() and result.counts()["kept"] == 40 and result.holdout_near_count == 0
    with pytest.raises(DermaganError):
        deduplicate(synthetic, train, train, {"phash": 65})
    with pytest.raises(DermaganError):
        deduplicate(synthetic, {"phash": train["phash"]}, train)


@pytest.mark.realdata
def test_hashes_equal_imagehash_on_real_images():
    folder = REAL_DATA / "images"
    if not folder.is_dir():
        pytest.skip(f"real HAM10000 images not found at {folder}")
    paths = sorted(folder.glob("*.jpg"))[:20]
    images = [Image.open(p).convert("RGB") for p in paths]
    assert len(images) == 20
    assert [to_imagehash_hex(h) for h in phash_batch(images)] == [str(imagehash.phash(im)) for im in images]
    expected = [str(imagehash.whash(im, image_scale=64)) for im in images]
    assert [to_imagehash_hex(h) for h in whash_batch(images, image_scale=64)] == expected


def test_rule_all_needs_every_hash_close_to_the_same_image():
    rng = np.random.default_rng(11)
    train = {kind: rng.integers(0, 256, (20, 8), dtype=np.uint8) for kind in KINDS}
    synthetic = {kind: rng.integers(0, 256, (3, 8), dtype=np.uint8) for kind in KINDS}
    synthetic["phash"][0], synthetic["whash"][0] = train["phash"][4], train["whash"][9]  # split match
    synthetic["phash"][1], synthetic["whash"][1] = train["phash"][7], train["whash"][7]  # a copy of train 7
    holdout = {kind: v[:0] for kind, v in train.items()}
    thresholds = {"phash": 4, "whash": 4}
    any_rule = deduplicate(synthetic, train, holdout, thresholds, rule="any")
    all_rule = deduplicate(synthetic, train, holdout, thresholds, rule="all")
    assert any_rule.reason.tolist() == ["memorised_train", "memorised_train", "kept"]
    assert all_rule.reason.tolist() == ["kept", "memorised_train", "kept"]
    near_copy = {kind: np.vstack([v, v[:1]]) for kind, v in synthetic.items()}
    assert deduplicate(near_copy, train, holdout, thresholds, rule="all").reason[-1] == "near_duplicate_synthetic"
    with pytest.raises(DermaganError, match="rule"):
        deduplicate(synthetic, train, holdout, thresholds, rule="most")
