"""A disk that fills under the workstation's commands (train, train-encoder, export, dataset
damage), on a real file system (tmpfs). They used to end in a traceback; training's said only
"RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 12928 vs 12822"
(torch's zip writer), with nothing on which checkpoint was left or how to go on."""
from __future__ import annotations

from adgan.cli import main
from tests.agent.conftest import fill_file_system, tmpfs
from training.train import load_checkpoint


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_training_on_a_full_disk_says_which_checkpoint_is_whole_and_resume_goes_on(synth_data, tmp_path, capsys):
    with tmpfs(tmp_path / "fs", "16m") as fs:
        run = fs / "run"
        common = [str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
                  "--features-d", "4", "--batch-size", "6", "--quiet", "--encoder-epochs", "0", "--out", str(run)]
        assert main(["train", *common, "--epochs", "2"]) == 0
        filler = fill_file_system(fs, leave=(run / "checkpoint.pt").stat().st_size // 2)  # the next one cannot fit
        capsys.readouterr()
        assert main(["train", *common, "--epochs", "4", "--resume"]) == 1
        err = one_line(capsys.readouterr().err)
        assert err.startswith("adgan train: error: No space left on device while writing"), err
        assert "stopped after epoch 3" in err and "checkpoint of epoch 2 is whole" in err and "--resume" in err, err
        assert load_checkpoint(run)["epoch"] == 2 and not list(run.glob("*.tmp"))  # whole, no temporary left
        filler.unlink()
        assert main(["train", *common, "--epochs", "4", "--resume"]) == 0  # as the message says
        assert load_checkpoint(run)["epoch"] == 4

        filler = fill_file_system(fs)
        capsys.readouterr()
        assert main(["train-encoder", str(run), "--epochs", "1", "--features", "4", "--quiet"]) == 1
        err = one_line(capsys.readouterr().err)
        assert "the encoder was not written" in err and f"adgan train-encoder {run}" in err, err
        assert not (run / "encoder.pt").exists() and not list(run.glob("*.tmp"))
        assert load_checkpoint(run)["epoch"] == 4


def test_export_and_damage_on_a_full_disk_say_so_in_one_line_and_leave_no_bundle(encoded_run, synth_data, tmp_path,
                                                                                    capsys):
    with tmpfs(tmp_path / "fs", "2m") as fs:
        fill_file_system(fs, leave=64 << 10)
        capsys.readouterr()
        assert main(["export", str(encoded_run), "--out", str(fs / "b"), "--k", "3"]) == 1
        err = one_line(capsys.readouterr().err)  # (the exporter's narration is not dumped either)
        assert err == "adgan export: error: No space left on device (the disk is full: free space or write " \
                      "elsewhere, and run again)", err
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]  # no bundle, no temporary folder
        assert main(["dataset", "damage", str(synth_data / "test"), "--out", str(fs / "d"), "--defects", "hole",
                     "--seed", "1", "--quiet"]) == 1
        err = one_line(capsys.readouterr().err)
        assert err.startswith("adgan dataset: error: No space left on device"), err
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]  # no part of a dataset, no temporary folder
