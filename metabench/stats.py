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
