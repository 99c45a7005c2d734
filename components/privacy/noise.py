"""Where DP-SGD's randomness comes from: Poisson sampling decisions and Gaussian noise.

Three sources, one interface:
- `SecureNoise`: an AES-256 counter-mode keystream (the `cryptography` package, i.e. OpenSSL,
  with AES-NI) keyed from the OS, turned into uniforms and, by Box-Muller (in numpy or torch,
  whichever is faster on the CPU), into Gaussians: in the parameters' precision (float32 from
  24-bit uniforms, as Opacus' secure mode on float32 parameters) or, with
  privacy.secure_noise_precision: float64, always in float64 from 52-bit uniforms. Opacus' own
  secure mode needs `torchcsprng`, which has no build for current torch. Like Opacus, each
  Gaussian is the sum of 4 draws divided by 2 (Holohan & Braghin 2021, sec. 5.1, n = 2), so
  the low bits of a released float no longer pin down the draw (the floating-point attack
  of Jin et al. 2022). Drawn in chunks of 2^17 values by a few threads (OpenSSL and torch
  release the GIL), each chunk under its own nonce, with every buffer reused and every step
  in place: about 4x the first version's speed (bench_text prints its share of a step).
  AES-CTR, the keystream of NIST SP 800-90A's CTR_DRBG, replaced ChaCha20 (both CSPRNGs): with
  AES-NI it is the faster one on both CPUs measured (0.79 against 3.4 ns per 4 bytes on this
  AVX2 machine; 4.1 against 4.8 ns per 32 bytes on an AVX-512 one).
  The noise does not depend on the data, so each draw is followed at once by the next one of
  the same size and scale, drawn in a background thread while the step computes gradients:
  the next step finds it ready (on a GPU the CPU's draw overlaps the device's step entirely).
  On this 2-core CPU, where torch's threads already hold both cores, drawing in the step
  instead was measured side by side and is no better (bench_text: 11 % / 14 % of a 32-text
  step for 1 / 2 layers, against 14 % / 10 % drawn ahead: within the machine's noise).
- `TorchNoise()`: torch's Mersenne Twister seeded from OS entropy (fast; not a CSPRNG).
- `TorchNoise(seed)`: reproducible, for development only; settings refuse a seed together
  with secure noise and in the prod profile.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_KEY_BYTES = 32
_TWO_PI = 2.0 * np.pi
_MANTISSA = 2.0**-53
_CHUNK = 1 << 17  # values per chunk: its buffers (8 MB) stay in cache; larger chunks ran 1.5x slower here
_WORKERS = max(1, min(8, os.cpu_count() or 1))


class SecureNoise:
    secure = True

    def __init__(self, precision: str = "parameters", ahead: bool = True) -> None:
        """`precision`: "parameters" draws a float32 model's normals in float32 from 24-bit uniforms,
        exactly as Opacus' secure mode does on float32 parameters (torch.normal in their dtype);
        "float64" draws every model's in float64 from 52-bit uniforms, 3x the cost. Holohan &
        Braghin (2021, sec. 5.1) count an attack on the 4-draw sum as 2^(3p) for p-bit draws:
        2^72 against 2^156. `ahead`: draw the next step's noise in the background (False: each
        draw in its own step, for the bench's comparison)."""
        self.precision, self.ahead = precision, ahead
        normals = ("float64 normals (52-bit uniforms)" if precision == "float64"
                   else "normals in the parameters precision (float32: 24-bit uniforms, as Opacus)")
        self.description = ("AES-256-CTR CSPRNG (cryptography/OpenSSL), Box-Muller, 4-draw sum against floating-point "
                            f"attacks, {normals}")
        self._key = os.urandom(_KEY_BYTES)
        self._stream = 0  # a fresh 96-bit stream number per request: keystreams never overlap
        self._stream_lock = threading.Lock()  # the sampler's draws and the next noise's are concurrent
        self._buffers: list[_ChunkBuffers] = []  # one per worker, kept across steps
        self._ahead: tuple[tuple, Future] | None = None  # (request, its draw) for the next step
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="privflow-noise")
        for dtype in (torch.float32, torch.float64):  # timed now, on an idle core, not beside a step
            _faster_library(dtype)

    def _nonce(self, streams: int = 1) -> int:
        with self._stream_lock:
            first = self._stream + 1
            self._stream += streams
            return first

    def _cipher(self, stream: int):
        # counter block: the stream in the top 96 bits, the block counter in the low 32 (a request
        # would need 64 GiB of keystream to carry into the next stream's)
        return Cipher(algorithms.AES(self._key), modes.CTR(stream.to_bytes(12, "big") + bytes(4))).encryptor()

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self._cipher(self._nonce()).update(bytes(8 * count)), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """Float64 uniforms on (0, 1]: 53 random bits each."""
        return ((self._words(count) >> np.uint64(11)).astype(np.float64) + 1.0) * _MANTISSA

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
        wide = like.dtype == torch.float64 or self.precision == "float64"
        request = (int(np.prod(shape)), std, torch.float64 if wide else torch.float32, like.is_cuda)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == request:
            values = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # the draw shares buffers: let it finish; its values are never used
            values = self._draw(*request)
        if self.ahead:
            self._ahead = (request, self._drawer.submit(self._draw, *request))
        return values.to(device=like.device, dtype=like.dtype).reshape(shape)

    def _draw(self, count: int, std: float, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
        out = torch.empty(count, dtype=dtype, pin_memory=pinned)  # page-locked: the copy to a GPU is one DMA
        starts = list(range(0, count, _CHUNK))
        first = self._nonce(len(starts))
        workers = min(_WORKERS, len(starts))
        self._grow_buffers(workers, min(count, _CHUNK), dtype)

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

    def _grow_buffers(self, workers: int, size: int, dtype: torch.dtype) -> None:
        self._buffers += [_ChunkBuffers(size, dtype) for _ in range(workers - len(self._buffers))]
        for worker in range(workers):
            if self._buffers[worker].size < size or self._buffers[worker].dtype != dtype:
                self._buffers[worker] = _ChunkBuffers(size, dtype)

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


def noise_source(secure: bool, seed: int | None, device: torch.device | str = "cpu",
                 precision: str = "parameters") -> NoiseSource:
    return SecureNoise(precision) if secure else TorchNoise(seed, device)


class _ChunkBuffers:
    """One worker's reused buffers: a chunk's keystream, its uniforms and its Gaussians, in one
    precision. float32: 24-bit uniforms (k + 1) / 2^24 on (0, 1], as torch draws float32 ones
    for Opacus; half the keystream of float64, SIMD lanes twice as wide and numpy's faster
    float32 trigonometry, ~8 ns per value against ~24 (one thread, this machine). float64:
    52-bit uniforms filling the mantissa of 1.0, on [1, 2)."""

    def __init__(self, size: int, dtype: torch.dtype = torch.float64) -> None:
        self.size, self.dtype = size, dtype  # values per chunk it can hold: a small model's draw needs no 8 MB
        self.words = np.empty(4 * size, dtype=np.uint64 if dtype == torch.float64 else np.uint32)
        self.zeros = bytes(self.words.nbytes)
        self.uniforms = self.words.view(np.float64) if dtype == torch.float64 else np.empty(4 * size, np.float32)
        self.normals = torch.empty(2, 2 * size, dtype=dtype)

    def _uniforms(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(radius uniforms on (0, 1], angle uniforms spanning one period) from the keystream words."""
        words, uniforms = self.words[:4 * count], self.uniforms[:4 * count]
        if self.dtype == torch.float64:
            np.right_shift(words, np.uint64(12), out=words)
            np.bitwise_or(words, np.uint64(0x3FF0_0000_0000_0000), out=words)  # [1, 2): in place, the words' memory
            np.subtract(2.0, uniforms[:2 * count], out=uniforms[:2 * count])  # 2 - u is on (0, 1]: log never sees 0
        else:
            np.right_shift(words, np.uint32(8), out=words)
            np.add(words, np.uint32(1), out=words)
            np.copyto(uniforms, words, casting="unsafe")  # exact: at most 2^24
            np.multiply(uniforms, np.float32(2.0**-24), out=uniforms)
        return uniforms[:2 * count], uniforms[2 * count:]

    def sum_of_four(self, cipher, count: int) -> torch.Tensor:
        """`count` sums of 4 standard normals (Box-Muller, in place), not yet halved.
        The chunk's 2·count uniform pairs give 4·count normals, each used once; value j sums
        the cosine normals of pairs j and j + count and the sine normals of the next two
        pairs along, so its 4 normals come from 4 distinct pairs (8 uniforms), as Opacus' sum
        of 4 separate draws does."""
        cipher.update_into(memoryview(self.zeros)[:self.words[:4 * count].nbytes],
                           memoryview(self.words).cast("B")[:self.words[:4 * count].nbytes])
        radius, angle = self._uniforms(count)
        cosines, sines = self.normals[0, :2 * count], self.normals[1, :2 * count]
        _BOX_MULLER[_faster_library(self.dtype)](radius, angle, cosines, sines)
        # contiguous halves and slices: a strided sum over a (4, count) view ran 8x slower
        values, shifted = cosines[:count].add_(cosines[count:]), sines[:count].add_(sines[count:])
        values[:-1].add_(shifted[1:])
        values[-1:].add_(shifted[:1])
        return values


def _box_muller_numpy(radius: np.ndarray, angle: np.ndarray, cosines: torch.Tensor, sines: torch.Tensor) -> None:
    """Normals r cos(2 pi v) and r sin(2 pi v), r = sqrt(-2 log u), in place."""
    np.log(radius, out=radius)
    np.multiply(radius, radius.dtype.type(-2.0), out=radius)
    np.sqrt(radius, out=radius)
    np.multiply(angle, angle.dtype.type(_TWO_PI), out=angle)  # 2 pi v: one full period
    for wave, out in ((np.cos, cosines.numpy()), (np.sin, sines.numpy())):
        np.multiply(wave(angle, out=out), radius, out=out)


def _box_muller_torch(radius: np.ndarray, angle: np.ndarray, cosines: torch.Tensor, sines: torch.Tensor) -> None:
    """The same arithmetic in torch, on the same memory."""
    radius, angle = torch.from_numpy(radius), torch.from_numpy(angle)
    radius.log_().mul_(-2.0).sqrt_()
    angle.mul_(_TWO_PI)
    torch.cos(angle, out=cosines).mul_(radius)
    torch.sin(angle, out=sines).mul_(radius)


_BOX_MULLER = {"numpy": _box_muller_numpy, "torch": _box_muller_torch}


@functools.cache
def _faster_library(dtype: torch.dtype) -> str:
    """numpy or torch, whichever computes Box-Muller faster in `dtype` on this CPU, timed once per
    process: their SIMD log, cos and sin differ by machine (on an AVX-512 CPU numpy's float32
    cos and sin ran ~2x torch's; on this AVX2 one torch's run ~2x numpy's). Both give the
    same normals to within a few ulps; only the time differs."""
    size = 1 << 15
    uniforms = np.random.default_rng(0).random(2 * size).astype(np.float32 if dtype == torch.float32 else np.float64)
    out = torch.empty(2, size, dtype=dtype)
    seconds = {}
    for name, box_muller in _BOX_MULLER.items():
        runs = []
        for _ in range(6):  # the first run warms up and is not counted
            radius, angle = uniforms[:size].copy(), uniforms[size:].copy()
            started = time.perf_counter()
            box_muller(radius, angle, out[0], out[1])
            runs.append(time.perf_counter() - started)
        seconds[name] = min(runs[1:])
    return min(seconds, key=seconds.get)
