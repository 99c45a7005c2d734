"""How the vault cuts plaintext into chunks, and (format v3) frames and pads them so that a
sealed file's size tells nothing finer than its bucket.

AES-GCM hides content, not length, and a sealed file's size is public wherever DVC lists it:
dvc.lock records it, `dvc push` shows it to whoever can list the remote. Unpadded, it gave
the plaintext's exact length, and for DP's adversary, who knows every record but one, the
length of that one: a snapshot of the breast-cancer export says whether the missing
diagnosis is "benign" or "malignant" (6 or 9 bytes). So in v3 every chunk's plaintext is
exactly the chunk size, a u32 count of its data bytes first, zeros after them; and the
number of chunks is rounded up by Padmé (Nikitin et al., "Reducing Metadata Leakage from
Encrypted Files and Communication with PURBs", PETS 2019): at most 12 % more chunks, and a
size that leaks O(log log n) bits of the count. One record changes the size only when it
moves the data across a 1 MiB chunk boundary (a 200-byte record: about 2 in 10,000).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

DATA_LENGTH = struct.Struct(">I")  # v3: how many bytes of a chunk's plaintext, after this field, are data


def padme(count: int) -> int:
    """Padmé: `count` rounded up so that only its top ~log2(log2(count)) bits remain free."""
    if count <= 2:
        return count
    exponent = count.bit_length() - 1  # floor(log2 count)
    free = exponent - exponent.bit_length()  # E - (floor(log2 E) + 1)
    mask = (1 << free) - 1
    return (count + mask) & ~mask


def fixed_chunks(pieces: Iterable[bytes], size: int) -> Iterator[tuple[memoryview, bool]]:
    """Regroup pieces of any size into `size`-byte chunks, flagging the last (maybe empty)."""
    buffer = bytearray()
    ready: bytes | None = None
    for piece in pieces:
        buffer += piece
        while len(buffer) > size:
            if ready is not None:
                yield memoryview(ready), False
            ready = bytes(buffer[:size])
            del buffer[:size]
    if ready is not None:
        yield memoryview(ready), not buffer
        if not buffer:
            return
    yield memoryview(bytes(buffer)), True


def file_chunks(handle: BinaryIO, size: int) -> Iterator[tuple[memoryview, bool]]:
    """Chunks of an open file through two reused buffers: constant memory, no copies."""
    buffers = [bytearray(size), bytearray(size)]
    current = memoryview(buffers[0])[: handle.readinto(buffers[0])]
    turn = 1
    while True:
        following = memoryview(buffers[turn])[: handle.readinto(buffers[turn])]
        final = len(following) == 0
        yield current, final
        if final:
            return
        current, turn = following, 1 - turn


def framed(data: Iterator[tuple[memoryview, bool]], chunk_size: int) -> Iterator[tuple[memoryview, bool]]:
    """v3 chunks from data chunks of at most chunk_size - 4 bytes: each framed to exactly
    chunk_size bytes (its data length, the data, zeros), then all-zero chunks up to Padmé's
    count; the last of them flagged final. One reused buffer: a chunk is valid until the next."""
    frame = bytearray(chunk_size)
    view = memoryview(frame)
    count = total = 0
    for chunk, last in data:
        count += 1
        DATA_LENGTH.pack_into(frame, 0, len(chunk))
        end = DATA_LENGTH.size + len(chunk)
        view[DATA_LENGTH.size:end] = chunk
        if end < chunk_size:
            view[end:] = bytes(chunk_size - end)
        total = padme(count) if last else 0
        yield view, last and total == count
    view[:] = bytes(chunk_size)  # padding: a data length of 0, zeros
    for index in range(count, total):
        yield view, index == total - 1


def unframed(plaintext: bytes, chunk_size: int) -> memoryview | None:
    """A v3 chunk's data, or None when its frame is malformed (only a forged chunk could be,
    and a forged chunk fails authentication first)."""
    if len(plaintext) != chunk_size:
        return None
    (length,) = DATA_LENGTH.unpack_from(plaintext)
    if length > chunk_size - DATA_LENGTH.size:
        return None
    return memoryview(plaintext)[DATA_LENGTH.size: DATA_LENGTH.size + length]
