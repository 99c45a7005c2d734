"""Where DP-SGD's randomness comes from: Poisson sampling decisions and Gaussian noise.

Three sources, one interface:
- `SecureNoise`: a ChaCha20 keystream (the `cryptography` package, i.e. OpenSSL) keyed from
  the OS, turned into uniforms and, by Box-Muller in float64, into Gaussians. Opacus' own
  secure mode needs `torchcsprng`, which has no build for current torch. Like Opacus, each
  Gaussian is the sum of 4 draws divided by 2 (Holohan & Braghin 2021, sec. 5.1, n = 2), so
  the low bits of a released float no longer pin down the draw (the floating-point attack
  of Jin et al. 2022). Drawn in chunks of 2^17 values by a few threads (OpenSSL and torch
  release the GIL), each chunk under its own nonce, with every buffer reused and every step
  in place: about 4x the first version's speed (bench_text prints its share of a step).
  The noise does not depend on the data, so each draw is followed at once by the next one of
  the same size and scale, drawn in a background thread while the step computes gradients:
  the next step finds it ready (on a GPU the CPU's draw overlaps the device's step entirely).
- `TorchNoise()`: torch's Mersenne Twister seeded from OS entropy (fast; not a CSPRNG).
- `TorchNoise(seed)`: reproducible, for development only; settings refuse a seed together
  with secure noise and in the prod profile.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32
_TWO_PI = 2.0 * np.pi
_MANTISSA = 2.0**-53
_ONE_BITS = np.uint64(0x3FF0_0000_0000_0000)  # float64 1.0: OR-ed with 52 random mantissa bits gives [1, 2)
_CHUNK = 1 << 17  # values per chunk: its buffers (8 MB) stay in cache; larger chunks ran 1.5x slower here
_WORKERS = max(1, min(8, os.cpu_count() or 1))


class SecureNoise:
    secure = True
    description = "ChaCha20 CSPRNG (cryptography/OpenSSL), Box-Muller, 4-draw sum against floating-point attacks"

    def __init__(self) -> None:
        self._key = os.urandom(_KEY_BYTES)
        self._stream = 0  # a fresh 96-bit nonce per request: keystreams never overlap
        self._stream_lock = threading.Lock()  # the sampler's draws and the next noise's are concurrent
        self._buffers: list[_ChunkBuffers] = []  # one per worker, kept across steps
        self._ahead: tuple[tuple, Future] | None = None  # (request, its draw) for the next step
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="privflow-noise")

    def _nonce(self, streams: int = 1) -> int:
        with self._stream_lock:
            first = self._stream + 1
            self._stream += streams
            return first

    def _cipher(self, stream: int):
        nonce = (0).to_bytes(4, "little") + stream.to_bytes(12, "little")  # block counter 0
        return Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self._cipher(self._nonce()).update(bytes(8 * count)), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """Float64 uniforms on (0, 1]: 53 random bits each."""
        return ((self._words(count) >> np.uint64(11)).astype(np.float64) + 1.0) * _MANTISSA

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
        request = (int(np.prod(shape)), std, torch.float64 if like.dtype == torch.float64 else torch.float32,
                   like.is_cuda)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == request:
            values = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # the draw shares buffers: let it finish; its values are never used
            values = self._draw(*request)
        self._ahead = (request, self._drawer.submit(self._draw, *request))
        return values.to(device=like.device, dtype=like.dtype).reshape(shape)

    def _draw(self, count: int, std: float, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
        out = torch.empty(count, dtype=dtype, pin_memory=pinned)  # page-locked: the copy to a GPU is one DMA
        starts = list(range(0, count, _CHUNK))
        first = self._nonce(len(starts))
        workers = min(_WORKERS, len(starts))
        self._grow_buffers(workers, min(count, _CHUNK))

        def fill(worker: int) -> None:
            buffers = self._buffers[worker]
            for index in range(worker, len(starts), workers):
                start = starts[index]
                end = min(start + _CHUNK, count)
                out[start:end] = buffers.sum_of_four(self._cipher(first + index), end - start).mul_(std / 2.0)

        if workers == 1:
            fill(0)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fill, range(workers)))
        return out

    def _grow_buffers(self, workers: int, size: int) -> None:
        self._buffers += [_ChunkBuffers(size) for _ in range(workers - len(self._buffers))]
        for worker in range(workers):
            if self._buffers[worker].size < size:
                self._buffers[worker] = _ChunkBuffers(size)

    def bernoulli(self, count: int, probability: float) -> torch.Tensor:
        return torch.from_numpy(self.uniform(count) <= probability)

    def state(self) -> dict:
        return {}  # never saved: a resumed run draws from a fresh key


class TorchNoise:
    secure = False

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        self.seeded = seed is not None
        self.description = f"torch Mersenne Twister, seed {seed} (development only)" if self.seeded \
            else "torch Mersenne Twister seeded from OS entropy"
        self._generator = torch.Generator(device=device)
        if self.seeded:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
        return torch.normal(0.0, std, size=tuple(shape), generator=self._generator,
                            device=self._generator.device, dtype=like.dtype).to(like.device)

    def bernoulli(self, count: int, probability: float) -> torch.Tensor:
        return torch.rand(count, generator=self._generator, device=self._generator.device).cpu() < probability

    def state(self) -> dict:
        return {"generator": self._generator.get_state()} if self.seeded else {}

    def restore(self, state: dict) -> None:
        if self.seeded and "generator" in state:
            self._generator.set_state(state["generator"])


NoiseSource = SecureNoise | TorchNoise


def noise_source(secure: bool, seed: int | None, device: torch.device | str = "cpu") -> NoiseSource:
    return SecureNoise() if secure else TorchNoise(seed, device)


class _ChunkBuffers:
    """One worker's reused buffers: a chunk's keystream, its uniforms and its Gaussians."""

    def __init__(self, size: int) -> None:
        self.size = size  # values per chunk it can hold: a small model's draw needs no 8 MB
        self.zeros = bytes(32 * size)
        self.words = np.empty(4 * size, dtype=np.uint64)
        self.normals = torch.empty(2, 2 * size, dtype=torch.float64)

    def sum_of_four(self, cipher, count: int) -> torch.Tensor:
        """`count` sums of 4 standard normals (Box-Muller in float64, in place), not yet halved.
        The chunk's 2·count uniform pairs give 4·count normals, each used once; value j sums
        the cosine normals of pairs j and j + count and the sine normals of the next two
        pairs along, so its 4 normals come from 4 distinct pairs (8 uniforms), as Opacus' sum
        of 4 separate draws does."""
        words = self.words[:4 * count]
        cipher.update_into(memoryview(self.zeros)[:32 * count], memoryview(self.words).cast("B")[:32 * count])
        np.right_shift(words, np.uint64(12), out=words)
        np.bitwise_or(words, _ONE_BITS, out=words)
        uniforms = words.view(np.float64)  # [1, 2): 52 random bits each
        radius, angle = uniforms[:2 * count], uniforms[2 * count:]
        # log and sqrt in numpy (its SIMD float64 log is ~3x torch's here), cos and sin in torch
        # (~4x numpy's): each where it is fastest, in place
        np.subtract(2.0, radius, out=radius)  # 2 - u is on (0, 1]: log never sees 0
        np.log(radius, out=radius)
        np.multiply(radius, -2.0, out=radius)
        np.sqrt(radius, out=radius)
        radius, angle = torch.from_numpy(radius), torch.from_numpy(angle)
        angle.mul_(_TWO_PI)  # 2 pi u for u on [1, 2): one full period, as 2 pi (u - 1) would be
        cosines, sines = self.normals[0, :2 * count], self.normals[1, :2 * count]
        torch.cos(angle, out=cosines).mul_(radius)
        torch.sin(angle, out=sines).mul_(radius)
        # contiguous halves and slices: a strided sum over a (4, count) view ran 8x slower
        values, shifted = cosines[:count].add_(cosines[count:]), sines[:count].add_(sines[count:])
        values[:-1].add_(shifted[1:])
        values[-1:].add_(shifted[:1])
        return values
