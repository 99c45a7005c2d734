import os
import struct

import pytest

from privflow.crypto.keys import Keyring
from privflow.crypto.vault import MAGIC, NONCE_SIZE, SNAPSHOT_IDS, TAG_SIZE, ArtifactIdentity, Vault, _ChunkCipher
from privflow.data.sources import snapshot_id
from privflow.errors import IntegrityError, KeyringError

CHUNK = 64
BLOCK = NONCE_SIZE + CHUNK + TAG_SIZE
SECRET = b"patient P-123456 has diagnosis malignant; " * 7  # 5 chunks of 64 bytes


def sealed_file(vault, identity, folder, data=SECRET):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "a.sealed"
    vault.seal(data, identity, path)
    return path


def body_offset(blob: bytes) -> int:
    (length,) = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])
    return len(MAGIC) + 4 + length


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1000])
def test_round_trip_any_size_bytes_stream_and_file(vault, identity, tmp_path, size):
    data = os.urandom(size)
    assert vault.open(sealed_file(vault, identity, tmp_path, data), identity) == data
    pieces = [data[i:i + 7] for i in range(0, size, 7)]
    vault.seal_stream(iter(pieces), identity, tmp_path / "s.sealed")
    (tmp_path / "plain.bin").write_bytes(data)
    vault.seal_file(tmp_path / "plain.bin", identity, tmp_path / "f.sealed")
    # every way in gives the same bytes: encryption is deterministic
    assert (tmp_path / "s.sealed").read_bytes() == (tmp_path / "f.sealed").read_bytes() \
        == (tmp_path / "a.sealed").read_bytes()


def test_deterministic_per_identity_and_plaintext(vault, identity, tmp_path):
    first = sealed_file(vault, identity, tmp_path / "1").read_bytes()
    assert sealed_file(vault, identity, tmp_path / "2").read_bytes() == first
    other = ArtifactIdentity(identity.dataset, identity.stage, "other.sealed", identity.upstream)
    assert sealed_file(vault, other, tmp_path / "3").read_bytes()[-100:] != first[-100:]
    changed = sealed_file(vault, identity, tmp_path / "4", SECRET[:-1] + b"!").read_bytes()
    start = body_offset(first)
    # the first four chunks are equal (the documented leak), the changed last one is not
    assert changed[start:start + 4 * BLOCK] == first[start:start + 4 * BLOCK]
    assert changed[start + 4 * BLOCK:] != first[start + 4 * BLOCK:]


def test_no_plaintext_in_ciphertext_and_no_partial_left(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path / "out")
    assert b"P-123456" not in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["a.sealed"]


WRITER = """
import sys, time
from pathlib import Path
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import ArtifactIdentity, Vault
def pieces():
    yield b"x" * 1000
    Path(sys.argv[2]).write_text("writing")  # half the artifact is on its way to disk
    time.sleep(60)
    yield b"never"
Vault(Keyring.open(Path(sys.argv[1])), chunk_size=64).seal_stream(
    pieces(), ArtifactIdentity("demo", "train", "checkpoint.sealed", "none"), Path(sys.argv[3]))
"""


def test_a_writer_killed_mid_seal_leaves_nothing_behind(keyring, tmp_path):
    """As a SIGKILLed training in its checkpoint: no file, named or not, may outlive it (a
    `.partial` in the checkpoint folder stayed when DVC then restored the stage from its run cache)."""
    import signal
    import subprocess
    import sys
    import time

    folder, started = tmp_path / "checkpoints", tmp_path / "started"
    folder.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(keyring.path), str(started),
                               str(folder / "train.sealed")])
    deadline = time.monotonic() + 60
    while not started.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists() and writer.poll() is None
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert list(folder.iterdir()) == []


def test_every_flipped_bit_is_rejected_and_messages_leak_nothing(vault, identity, tmp_path, keyring):
    path = sealed_file(vault, identity, tmp_path)
    _, key = keyring.dataset_key(identity.dataset)
    secrets = [SECRET[i:i + 16] for i in range(0, len(SECRET), 16)] + [key, key.hex().encode()]
    original = path.read_bytes()
    start = body_offset(original)
    # every byte of magic, header and the first chunk (nonce, body, tag), then a sample of the rest
    positions = list(range(start + BLOCK)) + list(range(start + BLOCK, len(original), 5))
    for position in positions:
        tampered = bytearray(original)
        tampered[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(tampered))
        with pytest.raises((IntegrityError, KeyringError)) as caught:
            vault.open(path, identity)
        message = str(caught.value).encode()
        assert not [s for s in secrets if s in message]


def test_truncation_and_appending_are_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    original = path.read_bytes()
    for cut in (1, TAG_SIZE, BLOCK, 2 * BLOCK):  # mid-tag, a whole tag, whole chunks
        path.write_bytes(original[:-cut])
        with pytest.raises(IntegrityError):
            vault.open(path, identity)
    for extra in (b"\x00", os.urandom(BLOCK), original[-BLOCK:]):  # junk, or the last chunk again
        path.write_bytes(original + extra)
        with pytest.raises(IntegrityError):
            vault.open(path, identity)


def test_reordered_and_spliced_chunks_are_rejected(vault, identity, tmp_path):
    path = sealed_file(vault, identity, tmp_path)
    original = path.read_bytes()
    start = body_offset(original)
    chunks = [original[i:i + BLOCK] for i in range(start, len(original), BLOCK)]
    swapped = chunks[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    path.write_bytes(original[:start] + b"".join(swapped))
    with pytest.raises(IntegrityError):
        vault.open(path, identity)
    other_identity = ArtifactIdentity(identity.dataset, identity.stage, "test.sealed", identity.upstream)
    other = sealed_file(vault, other_identity, tmp_path / "x").read_bytes()
    other_start = body_offset(other)
    path.write_bytes(original[:start] + chunks[0] + other[other_start + BLOCK:])
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


def test_wrong_keyring_is_rejected_without_leaking(vault, identity, tmp_path, keyring):
    path = sealed_file(vault, identity, tmp_path)
    stranger = Vault(Keyring.open(tmp_path / "other" / "keyring.json"))
    with pytest.raises(KeyringError, match="not in this keyring") as caught:
        stranger.open(path, identity)
    key_id, key = keyring.dataset_key(identity.dataset)
    message = str(caught.value).encode()
    assert SECRET[:20] not in message and key not in message and key.hex().encode() not in message


def test_100k_chunk_encryptions_never_repeat_a_nonce(identity):
    cipher = _ChunkCipher(os.urandom(32), identity, b"{}")
    out = memoryview(bytearray(NONCE_SIZE + 16 + TAG_SIZE))
    nonces = set()
    for index in range(100_000):
        cipher.seal(index, index == 99_999, memoryview(os.urandom(16)), out)
        nonces.add(bytes(out[:NONCE_SIZE]))
    assert len(nonces) == 100_000


def test_not_an_artifact(vault, identity, tmp_path):
    path = tmp_path / "plain.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(IntegrityError, match="bad magic"):
        vault.open(path, identity)


def test_a_snapshot_id_is_keyed_survives_kek_rotation_and_takes_one_key_for_all_datasets(keyring, tmp_path):
    """A bare digest of the private source in public metadata would let an adversary who knows
    every other record test guesses of the last one; the id needs the keyring."""
    source = tmp_path / "visits.csv"
    source.write_bytes(b"patient_id,age,diagnosis\nP-1,52,benign\n")
    digest = snapshot_id([source], False)
    keyed = Vault(keyring).snapshot_id(digest)
    assert keyed.startswith("hmac-sha256:") and digest.split(":")[1] not in keyed
    assert Vault(Keyring.open(keyring.path)).snapshot_id(digest) == keyed  # the same bytes, the same id
    keyring.rotate()  # a KEK rotation re-wraps the key and changes no id (nothing downstream re-runs)
    assert Vault(Keyring.open(keyring.path)).snapshot_id(digest) == keyed
    other_keyring = Keyring.open(tmp_path / "other" / "keyring.json")
    assert Vault(other_keyring).snapshot_id(digest) != keyed  # guesses cannot be tested without the key
    source.write_bytes(b"patient_id,age,diagnosis\nP-1,52,malignant\n")
    assert Vault(keyring).snapshot_id(snapshot_id([source], False)) != keyed
    assert [k.dataset for k in Keyring.open(keyring.path).dataset_keys.values()] == [SNAPSHOT_IDS]
