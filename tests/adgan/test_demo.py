import cv2

from adgan.demo import run_demo
from agent.sources.folder import frame_numbers


def test_demo_runs_end_to_end_in_reduced_mode(tmp_path):
    out = run_demo(tmp_path, n_train=3, n_test=2, seed=1, progress=False)
    for split, folder, n in (("train", "sphere", 3), ("test", "cylinder", 2), ("test", "rectangle_defect", 2)):
        assert frame_numbers(out["data"] / split / folder) == list(range(n))
    grid = cv2.imread(str(out["grid"]))
    assert grid is not None and grid.std() > 1  # not a blank picture
    steps = cv2.imread(str(out["segmentation"]))
    assert steps is not None and steps.shape[1] >= 3 * 640
    assert (out["raw"] / "reference.npz").is_file()
