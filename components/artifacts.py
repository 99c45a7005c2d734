"""Shared edges of every stage: the vault from the keyring, plaintext JSON side files.

Side files (manifests, metrics) hold counts, hashes and key ids only, never row values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from privflow.crypto.files import replacing
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.settings import keyring_path


def stage_paths(description: str | None, *names: str) -> argparse.Namespace:
    """A stage's command line: the dataset and the paths dvc.yaml passes it (`--name PATH`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", required=True, help="a dataset declared under `datasets:` in params.yaml")
    for name in names:
        parser.add_argument(f"--{name}", type=Path, required=True)
    return parser.parse_args()


def open_vault() -> Vault:
    """The vault over the existing keyring. Stages never create one: a keyring that vanished
    must be restored, not silently replaced by an empty one (`privflow run` makes the first)."""
    return Vault(Keyring.open(keyring_path(), create=False))


def write_json(path: Path, document: Any) -> None:
    """Write atomically: readers see the old file or the new one, never half of it. Written
    as the sealed files are (`replacing`): a killed writer leaves nothing, and two writers of
    one file never share a partial (under one `.partial` name, one moved the other's away:
    seen with two runs taking fingerprints at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as handle:
        handle.write((json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    """The checked-out commit, or 'uncommitted' outside git or before the first commit."""
    result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "uncommitted"
