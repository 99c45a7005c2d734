"""The vault's AEAD calls against NIST CAVP AES-256-GCM vectors (96-bit IV, 128-bit tag).

The vectors ship in tests/data (a subset of PyPI's cryptography_vectors 50.0.2). They test
the vault's own buffer handling: nonce | ciphertext | tag written into reused memory.
"""

from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privflow.crypto.vault import NONCE_SIZE, TAG_SIZE, gcm_open, gcm_seal_into

VECTORS = Path(__file__).parent / "data" / "nist_aes256_gcm_iv96_tag128.rsp"


def load_vectors() -> list[dict]:
    vectors, current = [], None
    for line in VECTORS.read_text().splitlines():
        line = line.strip()
        if line.startswith("Count"):
            current = {}
            vectors.append(current)
        elif current is not None and "=" in line and not line.startswith("["):
            name, value = (part.strip() for part in line.split("=", 1))
            current[name] = bytes.fromhex(value)
        elif current is not None and line == "FAIL":
            current["FAIL"] = True
    return vectors


ALL = load_vectors()


def test_vector_file_is_complete():
    assert len(ALL) == 750 and sum(v.get("FAIL", False) for v in ALL) == 191


@pytest.mark.parametrize("vector", ALL)
def test_vault_aead_matches_nist(vector):
    aead = AESGCM(vector["Key"])
    block = vector["IV"] + vector["CT"] + vector["Tag"]
    if vector.get("FAIL"):
        with pytest.raises(InvalidTag):
            gcm_open(aead, block, vector["AAD"])
        return
    assert gcm_open(aead, block, vector["AAD"]) == vector["PT"]
    out = memoryview(bytearray(NONCE_SIZE + len(vector["PT"]) + TAG_SIZE + 5))[: len(block)]
    gcm_seal_into(aead, vector["IV"], memoryview(vector["PT"]), vector["AAD"], out)
    assert bytes(out) == block
