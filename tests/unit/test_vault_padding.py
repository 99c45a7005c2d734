"""A sealed file's size shows its bucket, not its plaintext's length (vault format v3), and
files sealed in v2 still open."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import pytest

from privflow.crypto.chunks import DATA_LENGTH, fixed_chunks, padme
from privflow.crypto.vault import MAGIC, NONCE_SIZE, TAG_SIZE, Vault, _ChunkCipher, _header
from privflow.errors import IntegrityError

CHUNK = 64
DATA = CHUNK - DATA_LENGTH.size


def test_padme_matches_the_papers_definition_and_bounds():
    # Nikitin et al. 2019, Algorithm 1: E = floor(log2 L), S = floor(log2 E) + 1, the low E - S bits rounded up
    assert [padme(n) for n in (1, 2, 3, 7, 8, 9, 17, 100, 1000)] == [1, 2, 3, 7, 8, 10, 18, 104, 1024]
    for n in range(1, 20_000):
        padded = padme(n)
        assert n <= padded <= n * 1.12 + 1
        assert padme(padded) == padded  # a bucket's size is its own bucket
    assert len({padme(n) for n in range(1 << 16, 1 << 17)}) == 33  # 65,536 counts, 33 sizes (steps of 2,048)


def test_the_size_of_a_sealed_file_does_not_give_a_records_length(tmp_path, keyring, identity):
    """The breast-cancer case: the one unknown record's diagnosis is 6 or 9 bytes long. With
    the default chunk size both exports seal to the same size, as do all sizes in a chunk."""
    vault = Vault(keyring)
    rows = b"P-000001,benign,13.1\n" * 5000
    sizes = set()
    for last in (b"P-000002,benign,14.2\n", b"P-000002,malignant,14.2\n", b""):
        path = tmp_path / f"{len(last)}.sealed"
        assert vault.seal(rows + last, identity, path).plaintext_bytes == len(rows + last)
        assert vault.open(path, identity) == rows + last
        sizes.add(path.stat().st_size)
    assert len(sizes) == 1


def test_chunk_counts_are_padded_and_padding_opens_to_nothing(vault, identity, tmp_path):
    body = len(MAGIC) + 4 + len(_header("k", CHUNK, identity))
    for chunks, padded in ((1, 1), (8, 8), (9, 10), (17, 18)):
        data = bytes(range(256)) * (DATA * chunks // 256 + 1)
        data = data[:DATA * chunks]
        path = tmp_path / f"{chunks}.sealed"
        vault.seal(data, identity, path)
        blocks = (path.stat().st_size - body) // (NONCE_SIZE + CHUNK + TAG_SIZE)
        assert blocks == padded and vault.open(path, identity) == data
        assert vault.authenticate(path, identity) == len(data)


def _seal_v2(vault: Vault, data: bytes, identity, path) -> None:
    """The previous format, written as privflow before v3 wrote it: chunks of exactly the
    data (the last one short), no frames, no padding, HKDF info "privflow vault v2"."""
    key_id, key = vault.keys.dataset_key(identity.dataset)
    header = json.dumps({"v": 2, "alg": "AES-256-GCM/BLAKE3-SIV-STREAM", "key_id": key_id, "chunk_size": CHUNK,
                         "identity": asdict(identity)}, sort_keys=True).encode()
    cipher = _ChunkCipher(key, identity, header, version=2)
    with open(path, "wb") as handle:
        handle.write(MAGIC + struct.pack(">I", len(header)) + header)
        for index, (chunk, final) in enumerate(fixed_chunks([data], CHUNK)):
            block = memoryview(bytearray(NONCE_SIZE + len(chunk) + TAG_SIZE))
            cipher.seal(index, final, chunk, block)
            handle.write(block)


def test_files_sealed_in_v2_still_open(vault, identity, tmp_path):
    data = b"a checkpoint sealed before the upgrade " * 5
    path = tmp_path / "v2.sealed"
    _seal_v2(vault, data, identity, path)
    (header,) = struct.unpack(">I", path.read_bytes()[len(MAGIC):len(MAGIC) + 4])
    assert path.stat().st_size == len(MAGIC) + 4 + header + len(data) + 4 * (NONCE_SIZE + TAG_SIZE)  # exact
    assert vault.open(path, identity) == data


def test_a_frame_claiming_more_data_than_it_holds_is_refused(vault, identity, tmp_path):
    """Only the key holder could write one; the reader still never reads past a frame."""
    key_id, key = vault.keys.dataset_key(identity.dataset)
    header = _header(key_id, CHUNK, identity)
    frame = bytearray(CHUNK)
    DATA_LENGTH.pack_into(frame, 0, CHUNK)  # 4 more than a frame can hold
    block = memoryview(bytearray(NONCE_SIZE + CHUNK + TAG_SIZE))
    _ChunkCipher(key, identity, header).seal(0, True, memoryview(frame), block)
    path = tmp_path / "forged.sealed"
    path.write_bytes(MAGIC + struct.pack(">I", len(header)) + header + bytes(block))
    with pytest.raises(IntegrityError, match="chunk 0 is not a whole frame"):
        vault.open(path, identity)
