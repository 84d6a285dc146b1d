import pytest


@pytest.fixture(scope="session")
def tiny_run(synth_data, tmp_path_factory):
    """A tiny trained generator (32 px, features 4) on the synthetic spheres."""
    from adgan.cli import main
    out = tmp_path_factory.mktemp("run")
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--kind", "gan", "--size", "32",
                 "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--epochs", "3", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def bundles(tiny_run, tmp_path_factory):
    """Bundles of the tiny run: {(scope, loss): path}."""
    from agent.scoring.bundle import SearchDefaults
    from export.bundle import write_bundle
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for scope, loss in (("all", "mse"), ("all", "fg"), ("bn", "mse"), ("none", "fg")):
        p = root / f"{scope}-{loss}"
        write_bundle(tiny_run, p, SearchDefaults(theta_scope=scope, loss=loss, k=5, lr_theta=1e-4))
        out[(scope, loss)] = p
    return out
