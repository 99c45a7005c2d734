"""Texts in sealed tensors: safetensors holds numbers only, so a text column is stored as
every text's UTF-8 bytes end to end and where each text ends, sealed with its split."""

from __future__ import annotations

import numpy as np

TEXT_BYTES, TEXT_ENDS = "text_utf8:", "text_ends:"


def packed_texts(column: str, texts: np.ndarray) -> dict[str, np.ndarray]:
    """A text column as two tensors (safetensors holds numbers only): every text's UTF-8
    bytes end to end, and where each text ends. Sealed with the split like every row."""
    encoded = [text.encode("utf-8") if isinstance(text, str) else b"" for text in texts]  # a missing one: ""
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return {TEXT_BYTES + column: np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), TEXT_ENDS + column: ends}


def unpacked_texts(tensors: dict[str, np.ndarray], column: str) -> list[str]:
    """The texts `packed_texts` stored, in row order (in memory only)."""
    data, ends = tensors[TEXT_BYTES + column].tobytes(), tensors[TEXT_ENDS + column]
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [data[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())]


