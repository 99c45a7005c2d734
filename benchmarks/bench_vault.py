"""Vault throughput and memory: seal and open a 1 GiB file; peak RSS on a 4 GiB file.

Beside them, in the same run, the primitives alone on 1 MiB chunks in memory: AES-256-GCM
into a reused buffer, and the BLAKE3 pass that makes encryption deterministic.
Goals (issue 4): >= 5 GiB/s per core; peak RSS flat and under 256 MB for 4 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privflow.crypto.keys import Keyring  # noqa: E402
from privflow.crypto.vault import ArtifactIdentity, Vault, _ChunkCipher  # noqa: E402

GiB = 1 << 30
OUT = ROOT / "bench-results" / "vault.json"
IDENTITY = ArtifactIdentity("bench", "ingest", "snapshot.sealed", "sha256:bench")


def random_file(path: Path, size: int) -> Path:
    block = os.urandom(64 << 20)  # repeated: AES and BLAKE3 cost does not depend on content
    with open(path, "wb") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
    return path


def best_of(repeats: int, action) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return min(timings)


def primitive_rates() -> dict[str, float]:
    chunk, key = os.urandom(1 << 20), os.urandom(32)
    aead, out, nonce = AESGCM(key), bytearray((1 << 20) + 16), os.urandom(12)
    gcm = best_of(3, lambda: [aead.encrypt_into(nonce, chunk, b"", out) for _ in range(1024)])
    b3 = best_of(3, lambda: [blake3(chunk, key=key).digest(12) for _ in range(1024)])
    return {"AES-256-GCM alone, 1 MiB chunks, in memory": 1 / gcm, "BLAKE3 keyed alone, 1 MiB chunks": 1 / b3}


def chunk_cipher_rate() -> float:
    """The vault's per-chunk work alone (BLAKE3 synthetic nonce + AES-GCM), 1 GiB in memory."""
    cipher = _ChunkCipher(os.urandom(32), IDENTITY, b"{}")
    chunk, out = memoryview(os.urandom(1 << 20)), memoryview(bytearray((1 << 20) + 28))
    return 1 / best_of(3, lambda: [cipher.seal(i, i == 1023, chunk, out) for i in range(1024)])


def drain(vault: Vault, path: Path) -> None:
    for _ in vault.open_stream(path, IDENTITY):
        pass


def peak_rss_child(keyring: Path, plain: Path, sealed: Path) -> dict[str, float]:
    """Seal then open a big file in a fresh process; its own peak RSS, in MB."""
    code = f"""
import resource, sys, json
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from benchmarks.bench_vault import IDENTITY, drain
vault = Vault(Keyring.open(Path({str(keyring)!r})))
vault.seal_file(Path({str(plain)!r}), IDENTITY, Path({str(sealed)!r}))
after_seal = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
drain(vault, Path({str(sealed)!r}))
print(json.dumps({{"seal": after_seal, "seal_and_open": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    results: dict[str, float] = {"vault chunk cipher (seal), in memory": chunk_cipher_rate()}
    results.update(primitive_rates())
    # Files on tmpfs: what the vault costs with no disk in the way (the kernel still has to
    # allocate page-cache pages for every new file). Then the same on disk, fsync included.
    for where, folder in (("tmpfs", "/dev/shm"), ("disk", None)):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            base = Path(tmp)
            vault = Vault(Keyring.open(base / "keyring.json"))
            plain, sealed = random_file(base / "one.bin", GiB), base / "one.sealed"
            results[f"vault seal_file, 1 GiB, {where}"] = 1 / best_of(3, lambda: vault.seal_file(plain, IDENTITY, sealed))
            results[f"vault open_stream, 1 GiB, {where}"] = 1 / best_of(3, lambda: drain(vault, sealed))
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        Keyring.open(base / "keyring.json")
        big = random_file(base / "four.bin", 4 * GiB)
        rss = peak_rss_child(base / "keyring.json", big, base / "four.sealed")
    table = Table("measurement", "value", "goal", title="privflow vault benchmark (one core)")
    for name, rate in results.items():
        goal = ">= 5 GiB/s" if name.startswith("vault") else "reference"
        table.add_row(name, f"{rate:.2f} GiB/s", goal)
    table.add_row("peak RSS, seal 4 GiB", f"{rss['seal']:.0f} MB", "< 256 MB")
    table.add_row("peak RSS, seal + open 4 GiB", f"{rss['seal_and_open']:.0f} MB", "< 256 MB")
    Console().print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"throughput_gib_s": results, "peak_rss_mb_4gib": rss}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
