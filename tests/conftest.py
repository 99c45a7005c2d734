from __future__ import annotations

from pathlib import Path

import pytest

from components.keys import Keyring
from components.schema import load_schema
from components.settings import KEYRING_ENV
from components.vault import ArtifactIdentity, Vault

ROOT = Path(__file__).resolve().parents[1]
DEMO_SCHEMA = ROOT / "schemas" / "breast_cancer.yaml"


@pytest.fixture(autouse=True)
def _private_keyring(tmp_path_factory, monkeypatch):
    """No test ever touches the user's real keyring."""
    monkeypatch.setenv(KEYRING_ENV, str(tmp_path_factory.mktemp("keys") / "keyring.json"))


@pytest.fixture
def keyring(tmp_path) -> Keyring:
    return Keyring.open(tmp_path / "kr" / "keyring.json")


@pytest.fixture
def vault(keyring) -> Vault:
    return Vault(keyring, chunk_size=64)


@pytest.fixture
def identity() -> ArtifactIdentity:
    return ArtifactIdentity("demo", "ingest", "snapshot.sealed", "sha256:" + "ab" * 32)


@pytest.fixture(scope="session")
def demo_schema():
    return load_schema(DEMO_SCHEMA)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the in-process flow tests of this session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
