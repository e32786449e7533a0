"""torch's CPU ``normal_`` (float32), recomputed bit for bit with IEEE float32 operations in NumPy, on any machine.

Why: the micro-CLIP's shipped file does not store the untrained rows of its token table; they are regenerated from
the init seed. torch's ``Tensor.normal_`` on a contiguous float32 CPU tensor of 16 or more values draws all uniforms
serially from the generator (so the thread count never matters) and then applies Box-Muller, 16 values at a time,
with a CPU-specific kernel: on x86 with AVX2 (and AVX512) ``normal_fill_16_AVX2`` using the Cephes-derived
``log256_ps``/``sincos256_ps`` polynomials of ``aten/src/ATen/native/cpu/avx_mathfun.h``; elsewhere (``DEFAULT``,
ARM) scalar ``std::log``/``cos``/``sin``. The two differ in the last bits of about a third of the values, so the
same seed gave other weights — and another weights fingerprint — on another kind of CPU.

:func:`torch_normal` computes the AVX2 kernel's result (the one the shipped table was drawn with) from the same
uniform draws (``uniform_``, which consumes the generator exactly as ``normal_`` does) using only float32 add,
multiply, sqrt, comparisons, bit operations and *fused* multiply-adds where the compiled kernel fuses them (GCC
contracts a multiply into the add that consumes it). NumPy has no FMA, so :func:`_fma` computes a correctly rounded
float32 ``a*b + c`` from the exact float64 product, an exact two-sum and a midpoint correction. Each operation is
exactly specified by IEEE 754, so the result is the same on every machine; ``tests/portability`` checks it against
torch's own ``normal_`` bit for bit where torch runs the AVX2 kernel.
"""

from __future__ import annotations

import numpy as np
import torch

_F32, _F64 = np.float32, np.float64


def _fma(a, b, c) -> np.ndarray:
    """Correctly rounded float32 ``a * b + c`` (what one FMA instruction returns), element-wise."""
    a, b, c = (np.asarray(v, _F32) for v in (a, b, c))
    p = a.astype(_F64) * b.astype(_F64)  # exact: two 24-bit significands fit in 53 bits
    cc = np.broadcast_to(c, p.shape).astype(_F64)
    s = p + cc  # rounded to float64 ...
    bb = s - p
    err = (p - (s - bb)) + (cc - bb)  # ... with its exact error: s + err == p + c (Knuth's two-sum)
    r = s.astype(_F32)  # round to nearest even; wrong only when s sits exactly on a float32 midpoint and err != 0
    r64 = r.astype(_F64)
    side = np.where(s > r64, _F32(np.inf), _F32(-np.inf)).astype(_F32)
    other = np.nextafter(r, side)  # the float32 neighbour on s's side of r
    tie = (s != r64) & (s == (r64 + other.astype(_F64)) * 0.5) & (err != 0)
    return np.where(tie & (np.sign(err) == np.sign(s - r64)), other, r)


def _log(x: np.ndarray) -> np.ndarray:
    """``log256_ps`` of avx_mathfun.h for ``x`` in (0, 1] (float32[N])."""
    x = np.maximum(x, np.array(0x00800000, np.int32).view(_F32))  # smallest normal: no denormals
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(_F32) + _F32(1)  # exponent
    x = ((bits & ~0x7F800000) | np.array(0.5, _F32).view(np.int32)).view(_F32)  # mantissa in [0.5, 1)
    small = x < _F32(0.707106781186547524)  # SQRTHF
    tmp = np.where(small, x, _F32(0))
    x = x - _F32(1)
    e = e - np.where(small, _F32(1), _F32(0))
    x = x + tmp  # 2x - 1 where x < sqrt(1/2), else x - 1 (both exact)
    z = x * x
    y = _fma(_F32(7.0376836292e-2), x, _F32(-1.1514610310e-1))
    for coef in (1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1,
                 -2.4999993993e-1, 3.3333331174e-1):  # fmt: skip
        y = _fma(y, x, _F32(coef))
    y = y * x
    y = _fma(y, z, e * _F32(-2.12194440e-4))  # y*z fused with the add of e*q1 (the first multiply in order)
    y = y - z * _F32(0.5)  # exact product: fused or not is the same
    x = x + y
    return x + e * _F32(0.693359375)  # e*q2 is exact (q2 has 9 significant bits)


def _sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps`` of avx_mathfun.h: ``(sin x, cos x)`` for float32[N] ``x``."""
    sign_sin = x.view(np.uint32) & np.uint32(0x80000000)
    x = np.abs(x)
    j = (x * _F32(1.27323954473516)).astype(np.int32)  # truncated x * 4/pi
    j = (j + 1) & ~1
    y = j.astype(_F32)
    swap_sin = ((j & 4) << 29).astype(np.uint32)
    use_sin_poly = (j & 2) == 0
    # extended-precision reduction x - y*pi/4 in three fused steps
    x = _fma(y, _F32(-0.78515625), x)
    x = _fma(y, _F32(-2.4187564849853515625e-4), x)
    x = _fma(y, _F32(-3.77489497744594108e-8), x)
    sign_cos = (((~(j - 2)) & 4) << 29).astype(np.uint32)
    sign_sin = sign_sin ^ swap_sin
    z = x * x
    yc = _fma(_F32(2.443315711809948e-5), z, _F32(-1.388731625493765e-3))
    yc = _fma(yc, z, _F32(4.166664568298827e-2))
    yc = yc * z
    yc = _fma(yc, z, -(z * _F32(0.5)))  # the multiply by z fuses into the subtraction of z/2
    yc = yc + _F32(1)
    ys = _fma(_F32(-1.9515295891e-4), z, _F32(8.3321608736e-3))
    ys = _fma(ys, z, _F32(-1.6666654611e-1))
    ys = ys * z
    ys = _fma(ys, x, x)
    s = np.where(use_sin_poly, ys, yc)
    c = np.where(use_sin_poly, yc, ys)
    return (s.view(np.uint32) ^ sign_sin).view(_F32), (c.view(np.uint32) ^ sign_cos).view(_F32)


def _box_muller16(u: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``normal_fill_16_AVX2`` on rows of 16 uniforms: float32[K, 16] → float32[K, 16] normal values."""
    radius = np.sqrt(_F32(-2) * _log(_F32(1) - u[:, :8]))  # (K, 8); 1 - u in (0, 1]
    theta = _F32(2.0 * np.pi) * u[:, 8:]  # (K, 8)
    sin, cos = _sincos(theta.reshape(-1))
    sin, cos = sin.reshape(theta.shape), cos.reshape(theta.shape)
    std32, mean32 = _F32(std), _F32(mean)
    return np.concatenate([_fma(radius * cos, std32, mean32), _fma(radius * sin, std32, mean32)], axis=1)


def torch_normal(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """``torch.empty(n).normal_(mean, std, generator=generator)`` as torch's AVX2 CPU kernel computes it.

    Same values bit for bit on every machine (see the module docstring), and the generator ends in the same state.

    Args:
        n: number of values, at least 16 (below that torch uses another, scalar path).
        generator: a CPU ``torch.Generator``; advanced exactly as ``normal_`` advances it.
        mean: the distribution's mean.
        std: its standard deviation.

    Returns:
        ``float32[n]``.
    """
    if n < 16:
        raise ValueError(f"torch_normal needs n >= 16 (torch draws fewer values another way), got {n}")
    u = torch.empty(n).uniform_(0.0, 1.0, generator=generator).numpy()  # the uniforms normal_ draws first
    k = n // 16
    out = np.empty(n, _F32)
    out[: 16 * k] = _box_muller16(u[: 16 * k].reshape(k, 16), mean, std).reshape(-1)
    if n % 16:  # torch redraws the last 16 uniforms and recomputes the last 16 values
        tail = torch.empty(16).uniform_(0.0, 1.0, generator=generator).numpy()
        out[n - 16 :] = _box_muller16(tail.reshape(1, 16), mean, std).reshape(-1)
    return out


__all__ = ["torch_normal"]
