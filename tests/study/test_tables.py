"""The study's statistics against independent computations (scipy), on synthetic onsets with known answers."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from lisa_probe.study.tables import paired_log_ratio_test, paired_onset_table

LOG_RATIOS = np.array([0.012, -0.020, 0.031, 0.004, -0.008])


def test_the_paired_test_matches_scipy():
    """Ratio CI: scipy's t-interval of the log ratios; difference: scipy's one-sample t-test; equivalence: the larger
    p of scipy's two one-sided tests against log(1 ± margin)."""
    result = paired_log_ratio_test(LOG_RATIOS, margin=0.10)
    low, high = scipy.stats.t.interval(0.95, len(LOG_RATIOS) - 1, loc=LOG_RATIOS.mean(),
                                       scale=scipy.stats.sem(LOG_RATIOS))
    assert (result["ratio_ci_low"], result["ratio_ci_high"]) == pytest.approx((np.exp(low), np.exp(high)))
    assert result["ratio"] == pytest.approx(np.exp(LOG_RATIOS.mean()))
    assert result["p_difference"] == pytest.approx(scipy.stats.ttest_1samp(LOG_RATIOS, 0).pvalue)
    above = scipy.stats.ttest_1samp(LOG_RATIOS, np.log(0.9), alternative="greater").pvalue
    below = scipy.stats.ttest_1samp(LOG_RATIOS, np.log(1.1), alternative="less").pvalue
    assert result["p_equivalence"] == pytest.approx(max(above, below)) and result["equivalent"]
    assert not paired_log_ratio_test(LOG_RATIOS, margin=0.01)["equivalent"]  # a margin tighter than the noise


def test_the_minimum_detectable_effect_has_the_stated_power():
    """At a true log ratio equal to the MDE the paired t-test rejects with ~80 % probability (the noncentral t,
    independent of the formula)."""
    n, sd = len(LOG_RATIOS), LOG_RATIOS.std(ddof=1)
    mde = np.log1p(paired_log_ratio_test(LOG_RATIOS)["mde"])
    critical = scipy.stats.t.ppf(0.975, n - 1)
    noncentrality = mde / (sd / np.sqrt(n))
    power = scipy.stats.nct.sf(critical, n - 1, noncentrality) + scipy.stats.nct.cdf(-critical, n - 1, noncentrality)
    assert power == pytest.approx(0.80, abs=0.03)


def test_the_paired_table_pairs_by_seed_and_counts_censored_runs():
    seeds = [0, 1, 2, 3, 4]
    baseline = np.array([100.0, 112.0, 95.0, 130.0, 121.0])
    lisa = baseline * np.exp(LOG_RATIOS)
    lisa[4] = np.nan  # right-censored: not paired, counted
    onsets = pd.DataFrame({"setting": "s", "arm": ["baseline"] * 5 + ["lisa"] * 5, "seed": seeds * 2,
                           "t50": np.r_[baseline, lisa]})
    row = paired_onset_table(onsets).iloc[0]
    assert row["arm"] == "lisa" and row["seeds"] == "0,1,2,3" and row["unpaired"] == 1 and row["n_pairs"] == 4
    assert row["ratio"] == pytest.approx(np.exp(LOG_RATIOS[:4].mean()))
    assert row["ratios"].split(",")[0] == f"{np.exp(LOG_RATIOS[0]):.3f}"
