"""Statistical checks of initialised weights against their distribution's formula.

Sampling error: the sample variance of n i.i.d. draws has relative standard error
sqrt((kurtosis - 1) / n), kurtosis 1.8 for a uniform and 3 for a normal. The checks
allow six standard errors, so a correct initialiser fails about once in 10^8 draws.
"""

from __future__ import annotations

import numpy as np

UNIFORM_KURTOSIS, NORMAL_KURTOSIS = 1.8, 3.0


def fans(kernel: np.ndarray) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a conv ``(k, k, C_in, C_out)`` or dense ``(in, out)`` kernel."""
    receptive = int(np.prod(kernel.shape[:-2]))
    return receptive * kernel.shape[-2], receptive * kernel.shape[-1]


def assert_variance(values: np.ndarray, expected: float, kurtosis: float, what: str) -> None:
    values = np.asarray(values, np.float64).ravel()
    tolerance = 6 * np.sqrt((kurtosis - 1) / values.size)
    ratio = np.mean(values**2) / expected
    assert abs(ratio - 1) < tolerance, (
        f"{what}: variance {np.mean(values**2):.4g} vs formula {expected:.4g} "
        f"(ratio {ratio:.4f}, allowed +-{tolerance:.4f}, n={values.size})"
    )


def assert_pytorch_uniform(values: np.ndarray, fan_in: int, what: str) -> None:
    """Uniform in +-1/sqrt(fan_in): inside the bound, reaching it, variance 1/(3 fan_in)."""
    bound = 1 / np.sqrt(fan_in)
    values = np.asarray(values, np.float64).ravel()
    assert np.max(np.abs(values)) <= bound * (1 + 1e-6), f"{what}: exceeds +-{bound:.4g}"
    if values.size >= 1000:  # the largest of n uniform draws misses the bound by ~bound/n
        assert np.max(np.abs(values)) > bound * (1 - 20 / values.size), f"{what}: far from bound"
    assert_variance(values, bound**2 / 3, UNIFORM_KURTOSIS, what)


def assert_kaiming_fan_out(kernel: np.ndarray, what: str) -> None:
    """Kaiming normal, fan-out: variance 2 / fan_out, untruncated (values beyond 2 sigma)."""
    _, fan_out = fans(kernel)
    std = np.sqrt(2 / fan_out)
    assert_variance(kernel, std**2, NORMAL_KURTOSIS, what)
    if kernel.size >= 1000:
        assert np.max(np.abs(kernel)) > 2.5 * std, f"{what}: looks truncated"
