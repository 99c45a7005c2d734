"""Word attributions of a text classifier, on public text only: leave one word out.

For each public review, each of its words is removed in turn and the drop in the probability
of the class the model predicted for the whole text is that word's effect there (occlusion;
Zeiler & Fergus 2014; in NLP, Li, Monroe & Jurafsky 2016 "erasure"). A word's importance is
its mean effect over the reviews it occurs in, kept when it occurs in at least `min_count`
of them, so one odd review cannot make a word important. It needs no gradients and no
labels, and reads no private text: it costs no privacy.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

from privflow.data.public_text import film_reviews
from privflow.modeling.text_classifier import TextClassifier
from privflow.modeling.text_encoder import load_tokenizer, pretrained, tokenize

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _words(text: str, limit: int) -> list[str]:
    return WORD.findall(text)[:limit]


@torch.inference_mode()
def _probabilities(model: TextClassifier, tokenizer, texts: list[str], batch: int = 64) -> np.ndarray:
    parts = []
    for start in range(0, len(texts), batch):
        ids, mask = tokenize(tokenizer, texts[start:start + batch])
        parts.append(torch.softmax(model(ids, mask), dim=1).numpy())
    return np.concatenate(parts)


def word_importance(model: TextClassifier, text_card: dict, reviews: int = 48, min_count: int = 2,
                    seed: int = 17) -> tuple[list[dict], int]:
    """Per word (lower case): mean drop in the predicted class's probability when it is left
    out, over the public reviews it occurs in; and how many reviews were read."""
    corpus = film_reviews()
    chosen = np.random.default_rng(seed).permutation(len(corpus))[:reviews]
    tokenizer = load_tokenizer(pretrained(text_card["encoder"]), text_card["max_tokens"])
    limit = text_card["max_tokens"] // 2  # words beyond the token limit would be cut anyway
    texts = [" ".join(_words(corpus[i].text, limit)) for i in chosen]
    full = _probabilities(model, tokenizer, texts)
    variants, owners = [], []
    for index, text in enumerate(texts):
        words = text.split(" ")
        for position in range(len(words)):
            variants.append(" ".join(words[:position] + words[position + 1:]))
            owners.append((index, words[position].lower()))
    occluded = _probabilities(model, tokenizer, variants) if variants else np.empty((0, full.shape[1]))
    effects: dict[str, list[float]] = defaultdict(list)
    for (index, word), probabilities in zip(owners, occluded):
        predicted = int(full[index].argmax())
        effects[word].append(float(full[index, predicted] - probabilities[predicted]))
    ranked = sorted(((word, float(np.mean(values)), len(values)) for word, values in effects.items()
                     if len(values) >= min_count), key=lambda item: -abs(item[1]))
    return [{"feature": word, "importance": value, "occurrences": count} for word, value, count in ranked], len(texts)
