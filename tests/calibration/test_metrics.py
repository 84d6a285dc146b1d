import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from calibration.metrics import (auc, equal_rates_threshold, max_accuracy_threshold, rates, roc,
                                 joint_target_fpr_thresholds, target_fpr_threshold)


def test_auc_hand_computed_with_ties():
    # pairs (a > n): a=3 beats 1,2 and ties 3 -> 2.5; a=2 beats 1, ties 2 -> 1.5; over 2*3 pairs
    assert auc([1, 2, 3], [3, 2]) == pytest.approx(4 / 6)
    assert auc([0, 0], [1, 1]) == 1.0 and auc([1, 1], [0, 0]) == 0.0 and auc([5, 5], [5]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_roc_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 8, 40).astype(float)  # many ties
    a = rng.integers(2, 10, 25).astype(float)
    y = np.r_[np.zeros(40), np.ones(25)]
    s = np.r_[n, a]
    assert auc(n, a) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    r = roc(n, a)
    # same operating points (ours are "score > t", sklearn's ">= t": identical point sets)
    assert set(zip(np.round(r.fpr, 12), np.round(r.tpr, 12))) == set(zip(np.round(fpr, 12), np.round(tpr, 12)))


def test_max_accuracy_hand_computed():
    normal, anom = [1, 2, 3, 4], [3.5, 5, 6]
    # flag > 3: one false alarm (4); flag > 4: one miss (3.5). Both 6/7; the tie goes to the
    # cut with TPR and TNR closer (1 vs 0.75 beats 0.67 vs 1), placed midway to the next score.
    t = max_accuracy_threshold(normal, anom)
    assert t == 3.25 and rates(normal, anom, t)["accuracy"] == pytest.approx(6 / 7)
    assert max_accuracy_threshold([1, 2], [3, 4]) == 2.5  # separable: midway


def test_equal_rates_is_where_tpr_meets_tnr():
    normal = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    anom = [6.5, 8.5, 9.5, 11, 12, 13, 14, 15, 16, 17]
    t = equal_rates_threshold(normal, anom)
    r = rates(normal, anom, t)
    # cutting above 8.5: normals 1-8 pass (TNR 0.8), anomalies 9.5 and up are flagged (TPR 0.8)
    assert 8.5 <= t < 9 and r["tpr"] == r["tnr"] == 0.8


@pytest.mark.parametrize("fpr, flagged", [(0.0, 0), (0.005, 0), (0.01, 1), (0.1, 10), (0.25, 25), (0.5, 50)])
def test_target_fpr_flags_at_most_that_fraction_of_normals(fpr, flagged):
    normal = np.arange(100, dtype=float)
    t = target_fpr_threshold(normal, fpr)
    assert int((normal > t).sum()) == flagged


def test_target_fpr_with_ties_never_exceeds_the_budget():
    normal = np.array([1.0] * 50 + [2.0] * 50)
    t = target_fpr_threshold(normal, 0.1)
    assert (normal > t).mean() <= 0.1 and t == 2.0


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.1, 0.25])
def test_joint_target_fpr_of_one_check_is_target_fpr(fpr):
    normal = np.random.default_rng(0).normal(size=100)
    t, j = joint_target_fpr_thresholds(normal[:, None], fpr)
    assert t.shape == (1,) and t[0] == target_fpr_threshold(normal, fpr) and j == int(fpr * 100 + 1e-9)


def test_joint_target_fpr_splits_the_budget_between_checks_that_flag_different_samples():
    a = np.arange(100, dtype=float)
    normal = np.stack([a, a[::-1]], axis=1)  # each check's highest normals are the other's lowest
    t, j = joint_target_fpr_thresholds(normal, 0.1)
    assert j == 5 and int((normal > t).any(axis=1).sum()) == 10
    assert int((normal[:, 0] > t[0]).sum()) == int((normal[:, 1] > t[1]).sum()) == 5


def test_joint_target_fpr_gives_each_check_the_whole_budget_when_they_flag_the_same_samples():
    a = np.arange(100, dtype=float)
    t, j = joint_target_fpr_thresholds(np.stack([a, 3 * a + 1], axis=1), 0.1)
    assert j == 10 and t.tolist() == [89.0, 268.0]


@pytest.mark.parametrize("seed", range(20))
def test_joint_target_fpr_never_flags_more_than_the_budget(seed):
    rng = np.random.default_rng(seed)
    normal = np.round(rng.normal(size=(rng.integers(2, 300), int(rng.integers(1, 4)))), 1)  # ties
    normal[:, -1] += 0.5 * normal[:, 0]  # correlated
    fpr = float(rng.uniform(0, 0.3))
    t, j = joint_target_fpr_thresholds(normal, fpr)
    assert (normal > t).any(axis=1).sum() <= np.floor(fpr * len(normal) + 1e-9)
    if j < len(normal) - 1:  # one more sample each would have broken the budget (or j was at the top)
        t2 = np.sort(normal, axis=0)[len(normal) - j - 2]
        assert (normal > t2).any(axis=1).sum() > np.floor(fpr * len(normal) + 1e-9) or j + 1 > fpr * len(normal)


def test_joint_target_fpr_bad_inputs():
    with pytest.raises(ValueError, match="samples, checks"):
        joint_target_fpr_thresholds(np.zeros(5), 0.1)
    with pytest.raises(ValueError, match="fpr"):
        joint_target_fpr_thresholds(np.zeros((5, 2)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        joint_target_fpr_thresholds(np.array([[1.0, np.inf]]), 0.1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        auc([1, np.nan], [2])
    with pytest.raises(ValueError, match="needs normal and anomalous"):
        max_accuracy_threshold([1, 2], [])
    with pytest.raises(ValueError, match="fpr"):
        target_fpr_threshold([1, 2], 1.5)
