"""Pixel AUROC and PRO on hand-made maps (numbers worked out by hand)."""
import numpy as np
import pytest

from calibration.localisation import pixel_auroc, pro_auc, pro_curve


def two_regions():
    """One 8x8 image: a 1-pixel defect and a 9-pixel defect."""
    g = np.zeros((8, 8), bool)
    g[1, 1] = True
    g[4:7, 4:7] = True
    return g


def test_a_perfect_map_scores_one_and_a_constant_one_the_diagonal():
    g = two_regions()
    assert pixel_auroc([g.astype(float)], [g]) == 1.0
    assert pro_auc([g.astype(float)], [g]) == pytest.approx(1.0)
    flat = np.full(g.shape, 0.5)
    assert pixel_auroc([flat], [g]) == 0.5
    # PRO rises from (0, 0) to (1, 1) in one step: the area up to 0.3 is 0.3^2 / 2, over 0.3
    assert pro_auc([flat], [g]) == pytest.approx(0.15)


def test_each_region_counts_the_same_whatever_its_size():
    g = two_regions()
    m = np.zeros(g.shape)
    m[1, 1] = 1.0                   # finds the small defect, not the large one
    fpr, pro = pro_curve([m], [g])
    # at a threshold in (0, 1): the small region is fully flagged, the large not at all, no false positive
    assert 0.5 in set(np.round(pro[fpr == 0], 6))
    # beyond: everything flagged at once (FPR 1). Area: 0.5 up to FPR 0, then a straight line to (1, 1)
    # over [0, 0.3]: 0.3 * (0.5 + (0.5 + 0.5 * 0.3)) / 2 / 0.3 = 0.575
    assert pro_auc([m], [g]) == pytest.approx(0.575)
    # pixel AUROC sees 1 of 10 damaged pixels above 54 normal ones, 9 tied with them:
    # (1 * 54 + 9 * 54 * 0.5) / (10 * 54) = 0.55
    assert pixel_auroc([m], [g]) == pytest.approx(0.55)


def test_false_positives_cost_pro_area():
    g = two_regions()
    m = g.astype(float)
    m[0, 7] = 2.0                   # one defect-free pixel hotter than every defect
    # flagging it costs an FPR of 1/54 before any region is found: PRO 0 on [0, 1/54], then 1
    assert pro_auc([m], [g]) == pytest.approx((0.3 - 1 / 54) / 0.3)


def test_bad_inputs_are_refused():
    g = two_regions()
    with pytest.raises(ValueError, match="same"):
        pro_auc([np.zeros((4, 4))], [g])
    with pytest.raises(ValueError, match="region"):
        pro_auc([np.zeros((8, 8))], [np.zeros((8, 8), bool)])
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_auc([g.astype(float)], [g], fpr_limit=0)
