"""Intervals and McNemar's test against published values (lit_mnist.stats)."""

from __future__ import annotations

import math

import pytest

from lit_mnist.stats import (
    INTERVAL_METHOD,
    accuracy_interval,
    compare_sentence,
    format_accuracy,
    format_p,
    mcnemar_exact,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Stat Med 17:857-872: the score method, examples
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombes_table(successes: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_ninety_nine_point_one_percent_of_ten_thousand_is_about_a_fifth_of_a_point() -> None:
    low, high = accuracy_interval(0.9910, 10_000)
    assert (low, high) == pytest.approx((0.98895, 0.99267), abs=1e-5)
    assert (high - low) / 2 == pytest.approx(0.0019, abs=1e-4)  # "about ±0.19 points"
    assert low < 0.9910 < high and high - 0.9910 < 0.9910 - low  # skewed away from 100%


def test_wilson_interval_stays_inside_zero_and_one_and_narrows_with_n() -> None:
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    widths = [
        (lambda lo_hi: lo_hi[1] - lo_hi[0])(wilson_interval(n * 9 // 10, n)) for n in (100, 1000, 10_000)
    ]
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(90, 100, confidence=0.99)[1] > wilson_interval(90, 100)[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [((1, 0), "n must be > 0"), ((11, 10), "successes must be in 0..10"), ((5, 10, 1.0), "confidence")],
)
def test_wilson_interval_refuses_impossible_counts(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accuracy must be a fraction"):
        accuracy_interval(97.5, 100)  # a percentage, not a fraction


def test_mcnemar_exact_matches_the_worked_example() -> None:
    """Fagerland, Lydersen and Laake (2013), BMC Med Res Methodol 13:91: b = 1, c = 7; exact p = 0.070."""
    assert mcnemar_exact(1, 7) == 18 / 256  # 2 * (C(8,0) + C(8,1)) / 2**8
    assert mcnemar_exact(7, 1) == mcnemar_exact(1, 7)
    assert round(mcnemar_exact(1, 7), 3) == 0.070


def test_mcnemar_exact_at_its_edges() -> None:
    assert mcnemar_exact(0, 0) == 1.0  # no disagreement: no evidence of a difference
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(0, 10) == 2 / 1024
    expected = 2 * sum(math.comb(100, k) for k in range(31)) / 2**100
    assert mcnemar_exact(30, 70) == pytest.approx(expected, rel=1e-12)
    assert 0 < mcnemar_exact(2_000, 2_400) < 1e-8  # exact integers: no overflow for large counts
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_formatting_names_the_level_and_the_method() -> None:
    assert format_accuracy(0.9752, (0.9720, 0.9781)) == "97.52% (95% CI 97.20\u201397.81)"
    assert format_accuracy(0.9752, None) == "97.52%"
    assert INTERVAL_METHOD == "95% Wilson score interval"
    assert (
        format_p(0.0703125) == "p = 0.0703"
        and format_p(7.85e-05) == "p = 7.85e-05"
        and format_p(0.0) == "p < 1e-300"
    )


def test_compare_sentence_says_which_is_better_only_when_significant() -> None:
    significant = compare_sentence(30, 70, "a.ckpt", "b.ckpt")
    assert significant.startswith("b.ckpt is better than a.ckpt (")
    assert "only a.ckpt gets right: 30, only b.ckpt: 70" in significant and "p = 7.85e-05" in significant
    assert compare_sentence(1, 7).startswith("No significant difference between A and B at the 0.05 level")
    assert "p = 0.0703" in compare_sentence(1, 7)
    assert "are right and wrong on the same images" in compare_sentence(0, 0)
    assert len(significant.splitlines()) == 1
