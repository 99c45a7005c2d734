"""Where DP-SGD's randomness comes from: Poisson sampling decisions and Gaussian noise.

Three sources, one interface:
- `SecureNoise`: a ChaCha20 keystream (the `cryptography` package, i.e. OpenSSL) keyed from
  the OS, turned into uniforms and, by Box-Muller in float64, into Gaussians. Opacus' own
  secure mode needs `torchcsprng`, which has no build for current torch. Like Opacus, each
  Gaussian is the sum of 4 draws divided by 2 (Holohan & Braghin 2021, sec. 5.1, n = 2), so
  the low bits of a released float no longer pin down the draw (the floating-point attack
  of Jin et al. 2022).
- `TorchNoise()`: torch's Mersenne Twister seeded from OS entropy (fast; not a CSPRNG).
- `TorchNoise(seed)`: reproducible, for development only; settings refuse a seed together
  with secure noise and in the prod profile.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32
_TWO_PI = 2.0 * np.pi
_MANTISSA = 2.0**-53


class SecureNoise:
    secure = True
    description = "ChaCha20 CSPRNG (cryptography/OpenSSL), Box-Muller, 4-draw sum against floating-point attacks"

    def __init__(self) -> None:
        self._key = os.urandom(_KEY_BYTES)
        self._stream = 0  # a fresh 96-bit nonce per request: keystreams never overlap

    def _words(self, count: int) -> np.ndarray:
        self._stream += 1
        nonce = (0).to_bytes(4, "little") + self._stream.to_bytes(12, "little")  # block counter 0
        encryptor = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        return np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """Float64 uniforms on (0, 1]: 53 random bits each."""
        return ((self._words(count) >> np.uint64(11)).astype(np.float64) + 1.0) * _MANTISSA

    def _standard_normal(self, count: int) -> torch.Tensor:
        """Box-Muller in float64 (torch's vectorised log/sin/cos: 4x numpy's here)."""
        pairs = (count + 1) // 2
        u = torch.from_numpy(self.uniform(2 * pairs))
        radius = torch.sqrt(-2.0 * torch.log(u[:pairs]))
        angle = _TWO_PI * u[pairs:]
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
        count = int(np.prod(shape))
        summed = self._standard_normal(4 * count).reshape(4, count).sum(dim=0) / 2.0
        return (summed * std).to(device=like.device, dtype=like.dtype).reshape(shape)

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
