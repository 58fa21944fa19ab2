"""Intervals and paired tests against hand computations."""

import math

import numpy as np
import pytest

from metabench import stats


def test_episode_interval_is_196_standard_errors():
    values = np.array([0.2, 0.4, 0.6, 0.8])
    mean, half = stats.mean_interval(values)
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.959964 * sd / 2, rel=1e-6)


def test_seed_interval_uses_student_t():
    mean, half = stats.seed_interval([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)  # t_{0.975, 2} = 4.3027


def test_paired_comparison_on_a_hand_worked_case():
    a = np.array([0.8, 0.6, 0.9, 0.7])
    b = np.array([0.7, 0.6, 0.7, 0.6])
    result = stats.paired_comparison(a, b)
    # a - b = 0.1, 0, 0.2, 0.1: mean 0.1, sd sqrt(0.02/3)
    sd = math.sqrt(0.02 / 3)
    t_stat = 0.1 / (sd / 2)
    assert result["difference"] == pytest.approx(0.1)
    assert result["ci95"] == pytest.approx(3.182446 * sd / 2, rel=1e-6)
    from scipy import stats as sps

    assert result["p_value"] == pytest.approx(2 * sps.t.sf(t_stat, 3), rel=1e-9)
    assert stats.paired_comparison(b, a)["difference"] == pytest.approx(-0.1)


def test_benjamini_hochberg_adjustment():
    adjusted = stats.adjust_p_values([0.01, 0.04, 0.03])
    # sorted p: 0.01, 0.03, 0.04 -> 0.03, 0.045, 0.04 -> monotone from the top: 0.03, 0.04, 0.04
    np.testing.assert_allclose(adjusted, [0.03, 0.04, 0.04])


def test_fewer_than_two_paired_episodes_give_no_p_value():
    result = stats.paired_comparison([0.9], [0.1])
    assert result["difference"] == pytest.approx(0.8)
    assert np.isnan(result["p_value"]) and np.isnan(result["ci95"])
    adjusted = stats.adjust_p_values([0.01, float("nan"), 0.04])
    assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)


def test_disjoint_episodes_keep_those_that_reuse_no_earlier_image():
    # (episode, way, shot) image indices; episode 1 reuses image 1 of episode 0, episode 3 image 7 of episode 2
    support = np.array([[[0], [1]], [[1], [5]], [[6], [7]], [[8], [7]], [[9], [10]]])
    query = np.array([[[2], [3]], [[11], [12]], [[13], [14]], [[15], [16]], [[3], [17]]])
    # episode 4's query reuses image 3 of episode 0: kept are 0 and 2 only
    assert stats.disjoint_episodes(support, query).tolist() == [0, 2]


def test_open_interval_is_the_t_interval_over_the_kept_episodes():
    accuracies = [0.5, 0.9, 0.7, 0.1, 0.6, 0.8]
    mean, half, count = stats.open_interval(accuracies, [0, 2, 4, 5])
    kept = [0.5, 0.7, 0.6, 0.8]
    sd = math.sqrt(sum((v - 0.65) ** 2 for v in kept) / 3)
    assert (mean, count) == (pytest.approx(0.65), 4)
    assert half == pytest.approx(3.182446 * sd / 2, rel=1e-6)  # t_{0.975, 3} = 3.1824
    assert math.isnan(stats.open_interval(accuracies, [1])[1])  # one episode: no interval
