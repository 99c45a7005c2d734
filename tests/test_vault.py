import os
import struct

import pytest

from components.errors import IntegrityError, KeyringError
from components.keys import LocalKeyring
from components.vault import MAGIC, TAG_SIZE, ArtifactIdentity, Vault

CHUNK = 64
SECRET = b"patient P-123456 has diagnosis malignant; " * 7  # 5 chunks of 64 bytes


def sealed_file(vault, identity, tmp_path, data=SECRET):
    path = tmp_path / "a.sealed"
    vault.seal(data, identity, path)
    return path


def body_offset(blob: bytes) -> int:
    (length,) = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])
    return len(MAGIC) + 4 + length


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1000])
def test_round_trip_any_size(vault, identity, tmp_path, size):
    data = os.urandom(size)
    assert vault.open(sealed_file(vault, identity, tmp_path, data), identity) == data


def test_seal_stream_regroups_pieces(vault, identity, tmp_path):
    pieces = [os.urandom(n) for n in (5, 100, 0, 64, 1, 200)]
    vault.seal_stream(iter(pieces), identity, tmp_path / "s.sealed")
    assert vault.open(tmp_path / "s.sealed", identity) == b"".join(pieces)


def test_no_plaintext_in_ciphertext_and_no_partial_left(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    assert b"P-123456" not in path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["a.sealed", "kr"] or not list(tmp_path.glob("*.partial"))


def test_every_flipped_bit_is_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    original = path.read_bytes()
    start = body_offset(original)
    # every byte of magic+header, then every byte of the first chunk (nonce-bound body + tag),
    # then a sample of every later chunk
    positions = list(range(start + CHUNK + TAG_SIZE)) + list(range(start, len(original), 7))
    for position in positions:
        tampered = bytearray(original)
        tampered[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(tampered))
        with pytest.raises((IntegrityError, KeyringError)):
            vault.open(path, identity)


def test_truncation_and_appending_are_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    original = path.read_bytes()
    block = CHUNK + TAG_SIZE
    for cut in (1, TAG_SIZE, block, 2 * block):  # mid-tag, a whole tag, whole chunks
        path.write_bytes(original[:-cut])
        with pytest.raises(IntegrityError):
            vault.open(path, identity)
    for extra in (b"\x00", os.urandom(block)):
        path.write_bytes(original + extra)
        with pytest.raises(IntegrityError):
            vault.open(path, identity)


def test_reordered_and_spliced_chunks_are_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    original = path.read_bytes()
    start, block = body_offset(original), CHUNK + TAG_SIZE
    chunks = [original[i:i + block] for i in range(start, len(original), block)]
    swapped = chunks[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    path.write_bytes(original[:start] + b"".join(swapped))
    with pytest.raises(IntegrityError):
        vault.open(path, identity)
    other = sealed_file(vault, identity, tmp_path / "x", SECRET)  # same identity, other data key
    other_chunks = other.read_bytes()[start:]
    path.write_bytes(original[:start] + chunks[0] + other_chunks[block:])
    with pytest.raises(IntegrityError):
        vault.open(path, identity)


def test_swapped_or_replayed_artifact_is_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    test_split = ArtifactIdentity(identity.dataset, identity.stage, "test.sealed", identity.upstream)
    old_snapshot = ArtifactIdentity(identity.dataset, identity.stage, identity.name, "sha256:old")
    for wrong in (test_split, old_snapshot):
        with pytest.raises(IntegrityError, match="swapped or is stale") as caught:
            vault.open(path, wrong)
        assert "P-123456" not in str(caught.value)


def test_wrong_keyring_is_rejected_without_leaking(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    stranger = Vault(LocalKeyring.open(tmp_path / "other" / "keyring.json"))
    with pytest.raises(KeyringError, match="not in this keyring") as caught:
        stranger.open(path, identity)
    assert SECRET[:20].decode() not in str(caught.value)


def test_not_an_artifact(vault, identity, tmp_path):
    path = tmp_path / "plain.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(IntegrityError, match="bad magic"):
        vault.open(path, identity)
