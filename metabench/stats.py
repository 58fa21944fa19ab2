"""Confidence intervals, all from scipy.stats.

* Per run: mean episode accuracy ± z_{0.975}·s/√n (normal approximation over n ≥ 600
  episodes, the field's convention; s is the sample standard deviation, ddof=1).
* Across seeds: mean of the per-seed means with a Student-t interval over seeds.
* Open (Lafargue et al., "Oops, I Sampled it Again", TMLR 2024): the fixed episodes are drawn
  with replacement across episodes, so they reuse test images and the interval over them
  ("closed") only measures the randomness of the sampler given this test set. Over the
  episodes that share no image with an earlier one (``disjoint_episodes``) the episodes are
  independent draws of the data as well; the t-interval over those is the "open" one.
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


def disjoint_episodes(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Positions of the episodes, in order, that use no image an earlier kept episode used.

    ``support`` (E, ways, shots) and ``query`` (E, ways, queries) are image indices into one
    split. Which episodes are kept depends on the indices alone, never on any accuracy, so the
    kept episodes are the same for every algorithm and seed scored on these episodes.
    """
    used: set[int] = set()
    kept = []
    for position, (shots, queries) in enumerate(zip(support, query)):
        images = set(np.asarray(shots).ravel().tolist()) | set(np.asarray(queries).ravel().tolist())
        if used.isdisjoint(images):
            used |= images
            kept.append(position)
    return np.asarray(kept, dtype=np.int64)


def open_interval(accuracies, kept, confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width, count) of the t-interval over the image-disjoint episodes ``kept``."""
    values = np.asarray(accuracies, dtype=np.float64)[np.asarray(kept, dtype=np.int64)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else float("nan")), float("nan"), len(values)
    t = stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)
    return float(values.mean()), float(t * stats.sem(values)), len(values)


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
