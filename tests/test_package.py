"""The installable package: `pip install .` into a fresh virtual environment (the pinned requirements as
constraints), then the miniature study from a folder outside the checkout, by command and by function, and its
report (the page's template is package data)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from repro import zoo

API_SCRIPT = """
import pandas as pd
import repro
from repro import minidata, resources
assert "site-packages" in str(resources.data_dir("mini_zoo")), resources.data_dir("mini_zoo")
tables = repro.run_study("ResNet", zoo="mini", images=2, attack_iter=2, out="by-function")
command = pd.read_csv("by-command/blocks.csv")
pd.testing.assert_frame_equal(pd.read_csv("by-function/blocks.csv"), command)
assert len(tables.blocks) == len(command)
images, labels = minidata.load_split("test")
print("prediction", repro.load_model("ResNet", zoo="mini").predict(images[:2]).classes[:, 0])
"""


@pytest.mark.slow
def test_pip_install_then_the_study_outside_the_checkout_by_command_and_by_function(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(zoo.REPO_ROOT),
                              "-c", str(zoo.REPO_ROOT / "requirements.txt")],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    command = subprocess.run([str(bin_dir / "repro-evaluate"), "--zoo", "mini", "--model", "ResNet", "--images", "2",
                              "--attack-iter", "2", "--out", "by-command"], cwd=str(outside), env=environment,
                             capture_output=True, text=True, timeout=600)
    assert command.returncode == 0, command.stderr[-3000:]
    assert len(pd.read_csv(outside / "by-command" / "blocks.csv")) == 14 * 2 * 10
    # The report's template ships as package data: the study writes its page, and repro-report writes it again.
    page = outside / "by-command" / "report.html"
    assert page.stat().st_size > 1_000_000 and 'id="blocks-figure"' in page.read_text()
    page.unlink()
    reported = subprocess.run([str(bin_dir / "repro-report"), "by-command"], cwd=str(outside), env=environment,
                              capture_output=True, text=True, timeout=300)
    assert reported.returncode == 0 and page.is_file(), reported.stderr[-3000:]
    function = subprocess.run([str(python), "-c", API_SCRIPT], cwd=str(outside), env=environment,
                              capture_output=True, text=True, timeout=600)
    assert function.returncode == 0, function.stderr[-3000:]
    assert "prediction" in function.stdout
    for name in ("repro-validate", "repro-predict", "repro-download", "repro-report"):
        helped = subprocess.run([str(bin_dir / name), "--help"], cwd=str(outside), env=environment,
                                capture_output=True, text=True, timeout=120)
        assert helped.returncode == 0 and "usage:" in helped.stdout, (name, helped.stderr[-1000:])

    editable = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(zoo.REPO_ROOT),
                               "-c", str(zoo.REPO_ROOT / "requirements.txt")],
                              capture_output=True, text=True, timeout=900)
    assert editable.returncode == 0, editable.stderr[-3000:]
    located = subprocess.run([str(python), "-c", "from repro import resources; print(resources.data_dir('mini_zoo'))"],
                             cwd=str(outside), env=environment, capture_output=True, text=True, timeout=120)
    assert located.stdout.strip() == str(zoo.REPO_ROOT / "mini_zoo"), located.stderr[-2000:]
