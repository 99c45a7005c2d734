"""DP fine-tuning of a pretrained text encoder: the head, the last k layers, or all layers.

The encoder (privflow.modeling.text_encoder) is split where training starts. Its frozen
bottom (the embeddings and the first layers) runs once over every text, without gradients,
and its output stays in memory: frozen layers cost a forward pass per step otherwise, which
on this CPU is most of a step (PERFORMANCE-NOTES). That output is a deterministic function
of each text alone and of public weights, so training on it is DP-SGD on the same samples:
the guarantee covers the trained parameters as it would end to end.

The trainable top (`EncoderTop`: the last k pretrained BERT layers, masked mean pooling as the
encoder was pretrained with, a linear classifier) is made of Linear and LayerNorm layers only,
so privflow's own DP step clips it exactly (privflow.privacy.dp_sgd), through the same
loop, accountant and noise as every other model. Modes:
- `head`: k = 0, only the classifier on the pooled pretrained features;
- `last_layers`: the last k layers and the classifier;
- `all_layers`: every transformer layer; the token and position embeddings stay frozen by
  design (11.7 M of the 22.6 M parameters, a sparse lookup whose DP noise would swamp it,
  and the part pretraining got most right);
- `lora`: the last k layers stay frozen and LoRA adapters on their attention's query and
  value train with the classifier (privflow.modeling.text_classifier.LoRALinear): a few
  ten thousand parameters, so DP noise has little to swamp, merged into plain Linear
  layers for serving.

The top and the served classifier (bottom then top) live in privflow.modeling.text_classifier.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from privflow.modeling import text_classifier
from privflow.modeling.text_classifier import EncoderTop, add_lora, bottom_outputs
from privflow.modeling.text_encoder import load_encoder, load_tokenizer, pretrained, tokenize
from privflow.catalog import SPLITS
from privflow.crypto.vault import Vault
from privflow.data.public_text import film_reviews
from privflow.preflight import text_column
from privflow.privacy.audit import Canaries
from privflow.settings import TrainSettings
from privflow.training.baseline import Baseline, Schedule, adam_recipes, recipes, train_baseline
from privflow.training.io import load_text_split
from privflow.training.loop import resolve_device

FineTune = Literal["head", "last_layers", "all_layers", "lora"]
Precision = Literal["auto", "fp32", "bf16"]
CPU = torch.device("cpu")
TEXT_ADAM_RATES = (1e-2, 1e-3, 1e-4)  # bench_text (batch 32) chose 1e-4 or 1e-3; the demo's few steps of 256 need 1e-2
CHECKED_TEXTS = 64  # public reviews run in both precisions to measure bf16's deviation
BF16_TOLERANCE = 0.02  # auto: the largest relative deviation of the frozen output from fp32 taken


def trainable_layers(mode: FineTune, last_k: int, depth: int) -> int:
    """How many of the encoder's last layers the top holds (lora: frozen, with adapters)."""
    return {"head": 0, "last_layers": min(last_k, depth), "all_layers": depth, "lora": min(last_k, depth)}[mode]


@torch.no_grad()
def frozen_outputs(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, frozen_layers: int,
                   batch: int = 64, precision: Precision = "fp32", device: torch.device = CPU) -> torch.Tensor:
    """The frozen bottom's output for every text, the mask as a last channel (in memory only:
    it is as sensitive as the texts), computed on `device` (bf16 autocast there if asked),
    kept in fp32 on the CPU."""
    encoder.eval().to(device)
    parts = []
    for start in range(0, len(ids), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            part = bottom_outputs(encoder, ids[start:start + batch].to(device), mask[start:start + batch].to(device),
                                  frozen_layers)
        parts.append(part.float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, ids.shape[1], encoder.config.hidden_size + 1)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware (a CUDA GPU from Ampere on; a CPU with
    AVX512-BF16 or AMX, as oneDNN reports it); elsewhere autocast emulates it, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def frozen_precision(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, frozen_layers: int,
                     wanted: Precision, device: torch.device) -> tuple[Precision, float | None]:
    """The precision of the frozen pass, and its output's deviation from fp32 on the texts
    given (relative Frobenius norm; None when not measured). `auto`: bf16 where the device has
    it natively and the deviation is within BF16_TOLERANCE, else fp32. Only the frozen pass:
    the DP step (per-sample norms, clipping, noise) always runs in fp32, as the guarantee
    rests on clipping being exact; and features, not gradients, are what bf16 perturbs here."""
    if wanted == "fp32" or (wanted == "auto" and not native_bf16(device)) or len(ids) == 0:
        return "fp32", None
    first = slice(0, CHECKED_TEXTS)
    exact = frozen_outputs(encoder, ids[first], mask[first], frozen_layers, device=device)[..., :-1]
    fast = frozen_outputs(encoder, ids[first], mask[first], frozen_layers, precision="bf16", device=device)[..., :-1]
    deviation = float((fast - exact).norm() / exact.norm().clamp(min=1e-12))
    return ("fp32" if wanted == "auto" and deviation > BF16_TOLERANCE else "bf16"), deviation


def public_check_tokens(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """What bf16's deviation is measured on: the first public film reviews, tokenized as the
    private texts are. Never the private texts: the deviation is published (model card,
    report), and a figure computed from private texts without noise would leak them outside
    the DP guarantee, as would the precision chosen from it."""
    return tokenize(tokenizer, [review.text for review in film_reviews()[:CHECKED_TEXTS]])


def encoder_top(encoder: nn.Module, mode: FineTune, last_k: int, n_classes: int, seed: int = 0,
                lora_rank: int = 8, lora_alpha: float = 16.0) -> tuple[EncoderTop, int]:
    """The trainable top for this mode, and how many layers stay frozen below it."""
    depth = len(encoder.encoder.layer)
    k = trainable_layers(mode, last_k, depth)
    top = text_classifier.encoder_top(encoder, k, n_classes, seed)
    if mode == "lora":
        torch.manual_seed(seed + 1)  # the adapters' initial A only (B starts at zero)
        add_lora(top, lora_rank, lora_alpha)
    return top, depth - k


def text_baseline(top: EncoderTop, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                  schedule: Schedule, learning_rate: float) -> Baseline:
    """The non-private fine-tuning of the same top (a copy) on the same split: Adam at three
    rates and, when only the head trains, the DP run's recipe without its noise (at
    `learning_rate`); the best on the held-back tenth. 1e-2 is needed where training takes
    few steps (the demo's head, 27 steps of 256 texts: without it 0.664 against its DP twin's
    0.734 in `make run`, and Adam alone still lost by a point, 0.748 against 0.759). The
    clipped candidate is the DP run minus its noise, so in expectation it never loses to it;
    on a head (a Linear on cached features) it costs milliseconds, but per-example clipping
    through an encoder layer costs a DP run per train stage (the text e2e test went from
    121 to 203 s with it), where Adam has always been the stronger (bench_text)."""
    candidates = (recipes(learning_rate, TEXT_ADAM_RATES, schedule.lr_schedule) if not top.layers
                  else adam_recipes(TEXT_ADAM_RATES))
    return train_baseline(lambda: copy.deepcopy(top), train, test, schedule, candidates)


@dataclass
class TextTraining:
    """A text dataset made ready for the loop: the frozen bottom's outputs (in memory only),
    the top DP-SGD trains, an untouched copy of it for the baseline, and the model card's
    `text` entry (the pretrained encoder's name, origin and weights' hash: public lineage),
    and the audit's canaries, when drawn, as the top reads them (the frozen bottom's output)."""

    top: EncoderTop
    initial_top: EncoderTop
    train: TensorDataset
    test: TensorDataset
    card: dict
    canaries: Canaries | None = None

    def baseline(self, t: TrainSettings) -> Baseline:
        return text_baseline(self.initial_top, self.train.tensors[:2], self.test.tensors[:2], Schedule.of(t),
                             t.learning_rate)


def prepare_text_training(t: TrainSettings, column: str, n_classes: int,
                          splits: tuple[tuple[list[str], torch.Tensor, torch.Tensor], ...],
                          canaries: Canaries | None = None) -> TextTraining:
    """Tokenize each split's texts and run the frozen bottom over them, in memory; `splits`
    holds (texts, labels, units) of train then test. The audit's canary texts, if any, take
    the same way, so the top is audited on the inputs it trains on."""
    model = pretrained(t.text.encoder)
    encoder, tokenizer = load_encoder(model), load_tokenizer(model, t.text.max_tokens)
    text = t.text
    top, frozen = encoder_top(encoder, text.fine_tune, text.last_k, n_classes, seed=t.init_seed,
                              lora_rank=text.lora_rank, lora_alpha=text.lora_alpha)
    tokens = [tokenize(tokenizer, texts) for texts, _, _ in splits]
    device = resolve_device(t.device)
    precision, deviation = frozen_precision(encoder, *public_check_tokens(tokenizer), frozen, text.frozen_precision,
                                            device)
    datasets = [TensorDataset(frozen_outputs(encoder, ids, mask, frozen, precision=precision, device=device), labels,
                              units) for (ids, mask), (_, labels, units) in zip(tokens, splits)]
    if canaries is not None:
        ids, mask = tokenize(tokenizer, list(canaries.texts))
        canaries = canaries.as_features(frozen_outputs(encoder, ids, mask, frozen, precision=precision,
                                                       device=device).numpy())
    encoder.cpu()  # the frozen pass is done; the top (copies of its last layers) trains where the loop puts it
    card = {"encoder": model.name, "distribution": model.distribution, "origin": model.origin,
            "weights_sha256": model.weights_sha256, "tokenizer_sha256": model.tokenizer_sha256, "column": column,
            "fine_tune": t.text.fine_tune, "trained_layers": len(top.layers), "frozen_layers": frozen,
            "max_tokens": t.text.max_tokens, "frozen_precision": precision,
            "frozen_deviation_from_fp32": deviation, **({"lora_rank": text.lora_rank, "lora_alpha": text.lora_alpha}
                                                if text.fine_tune == "lora" else {}),
            "trained_parameters": sum(p.numel() for p in top.parameters() if p.requires_grad),
            "encoder_parameters": sum(p.numel() for p in encoder.parameters())}
    return TextTraining(top, copy.deepcopy(top), datasets[0], datasets[1], card, canaries)


def load_text_training(t: TrainSettings, vault: Vault, description: dict, data_dir: Path,
                       canaries: Canaries | None = None) -> TextTraining:
    """Decrypt the sealed splits' texts (in memory only) and prepare them for the loop."""
    column = text_column(description["text_columns"], t.text.column, f"dataset {description['dataset']}")
    return prepare_text_training(t, column, len(description["classes"]), tuple(
        load_text_split(vault, description, split, data_dir, column) for split in SPLITS), canaries)
