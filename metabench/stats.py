"""Confidence intervals, all from scipy.stats.

* Per run: mean episode accuracy ± z_{0.975}·s/√n (normal approximation over n ≥ 600
  episodes, the field's convention; s is the sample standard deviation, ddof=1).
* Across seeds: mean of the per-seed means with a Student-t interval over seeds.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the normal-approximation interval over episodes."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    z = stats.norm.ppf(0.5 + confidence / 2)
    return float(values.mean()), float(z * stats.sem(values))


def seed_interval(seed_means, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the t-interval over per-seed means."""
    values = np.asarray(seed_means, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    t = stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)
    return float(values.mean()), float(t * stats.sem(values))


def paired_comparison(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Compare two algorithms scored on the same episodes (element i of ``a`` and ``b``).

    Returns the mean difference ``a - b`` with its paired t-interval and the two-sided
    p-value of the paired t-test (``scipy.stats.ttest_rel``).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    difference = a - b
    if len(difference) < 2:  # no variance to test against: no evidence either way
        return {
            "difference": float(difference.mean()) if len(difference) else float("nan"),
            "ci95": float("nan"),
            "p_value": float("nan"),
        }
    mean = float(difference.mean())
    if np.all(difference == difference[0]):
        return {"difference": mean, "ci95": 0.0, "p_value": 1.0 if mean == 0 else 0.0}
    t = stats.t.ppf(0.5 + confidence / 2, df=len(difference) - 1)
    return {
        "difference": mean,
        "ci95": float(t * stats.sem(difference)),
        "p_value": float(stats.ttest_rel(a, b).pvalue),
    }


def adjust_p_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p_values, np.nan)
    tested = np.isfinite(p_values)  # an untestable pair (fewer than two episodes) stays NaN
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p_values[tested], method="bh")
    return adjusted
