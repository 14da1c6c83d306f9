"""How sure a reported accuracy is, and whether two models differ: small exact formulas, no SciPy.

An accuracy on n test images is a proportion, so its interval is the Wilson score interval (it stays
inside [0, 1] and keeps its coverage near 0% and 100%, where the textbook normal interval does not).
Two models tested on the same images are compared with McNemar's exact test: only the images where
exactly one model is right carry information, and under "no difference" each such image is a fair coin.
"""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95
#: Between an interval's ends, as ranges are printed (97.21 to 97.80, an en dash); an escape so the
#: source shows which dash it is.
EN_DASH = "\u2013"
INTERVAL_METHOD = "95% Wilson score interval"
COMPARE_METHOD = "McNemar's exact test"


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``n`` as proportions ``(low, high)``."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # At 0 and n successes the formula's bound is exactly 0 or 1; clamp the float rounding around it.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def accuracy_interval(accuracy: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson interval of an accuracy (a fraction in [0, 1]) measured on ``n`` examples."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
    return wilson_interval(round(accuracy * n), n, confidence)


def format_interval(interval: tuple[float, float] | list[float], digits: int = 2) -> str:
    """``(0.9721, 0.9780)`` -> ``"95% CI 97.21`` :data:`EN_DASH` ``97.80"`` (percent, the level named)."""
    low, high = interval
    return f"95% CI {100 * low:.{digits}f}{EN_DASH}{100 * high:.{digits}f}"


def format_accuracy(
    accuracy: float, interval: tuple[float, float] | list[float] | None, digits: int = 2
) -> str:
    """``"97.52% (95% CI 97.21-97.80)"`` (an en dash between the ends); ``"97.52%"`` without an interval."""
    text = f"{100 * accuracy:.{digits}f}%"
    return text if interval is None else f"{text} ({format_interval(interval, digits)})"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of McNemar's test from the discordant counts ``b`` and ``c``.

    ``b``: images only the first model gets right; ``c``: only the second. Under no difference
    ``b ~ Binomial(b + c, 1/2)``; the p-value doubles the smaller tail (capped at 1).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    # Exact integers: 2 * sum C(n, k) / 2**n, divided once (Python's int division rounds correctly).
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare_sentence(b: int, c: int, first: str = "A", second: str = "B", alpha: float = 0.05) -> str:
    """One sentence on whether two models differ on the same images, with McNemar's exact p-value.

    ``b``: images only ``first`` gets right; ``c``: only ``second``. "Better" is said only where the
    difference is significant at ``alpha``.
    """
    if b == c == 0:
        return f"{first} and {second} are right and wrong on the same images ({COMPARE_METHOD}: p = 1)."
    p = mcnemar_exact(b, c)
    counts = f"images only {first} gets right: {b}, only {second}: {c}"
    if p < alpha:
        better, worse = (first, second) if b > c else (second, first)
        verdict = f"{better} is better than {worse}"
    else:
        verdict = f"No significant difference between {first} and {second} at the {alpha:g} level"
    return f"{verdict} ({counts}; {COMPARE_METHOD}: {format_p(p)})."


def format_p(p: float) -> str:
    """``"p = 0.0703"``, ``"p = 7.85e-05"``: 3 significant digits, scientific below 0.001."""
    if p == 0.0:  # below the smallest float: say so rather than print an impossible 0
        return "p < 1e-300"
    return f"p = {p:.3g}" if p >= 1e-3 else f"p = {p:.2e}"
