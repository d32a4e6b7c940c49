import sys
from pathlib import Path

import pytest

from scireid.config import load_config

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def code_dir(tmp_path):
    """A parent folder whose name looks like a label source: it must never change a label."""
    d = tmp_path / "my_code" / "c5_007"
    d.mkdir(parents=True)
    return d


def tiny_cfg(root, out, *extra):
    """The synthetic preset shrunk to seconds: 64x32 input, a few steps per epoch."""
    return load_config("synthetic", [
        f"data.root={root}", f"run.out={out}", "model.arch=tiny-rn", "model.weights=none", "stage2.lr=1e-3",
        "stage2.freeze_backbone_bn=false",
        "data.height=64", "data.width=32", "data.num_instances=4",
        "stage1.epochs=2", "stage1.batch_size=16", "stage1.warmup_epochs=1",
        "stage2.epochs=3", "stage2.batch_size=16", "stage2.warmup_epochs=1", "stage2.milestones=[2]",
        "stage2.cal_start_epoch=1", "stage2.cal_classifier_start_epoch=0", "stage2.eval_every=1",
        "run.max_steps_per_epoch=3", "run.tensorboard=false", "eval.batch_size=64", *extra])


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from scireid.data.synthetic import generate
    return generate(tmp_path_factory.mktemp("syn") / "data", ids=8, seed=5)


@pytest.fixture(scope="session")
def full_run(data_root, tmp_path_factory):
    """One tiny SCI run (both stages) shared by the engine and analysis tests."""
    from scireid.engine.trainer import train
    out = tmp_path_factory.mktemp("runs") / "full"
    res = train(tiny_cfg(data_root, out))
    return out, res


def browser_screenshot(page, shot, size: str = "1200,3000"):
    """Render a local HTML file in headless Chromium (slow tests only); skip where none is installed."""
    import shutil
    import subprocess
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server", f"--screenshot={shot}",
                    f"--window-size={size}", f"file://{page}"], check=True, timeout=120, capture_output=True)
    return shot
