"""The README's first command, `make demo`, on fewer images and steps: tables, both figures and the report appear."""
import importlib.util
import json

import pandas as pd
import pytest

from repro import zoo
from tests.test_validation import mini_available

spec = importlib.util.spec_from_file_location("demo", zoo.REPO_ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


@pytest.mark.skipif(not mini_available(), reason="no miniature checkpoint in mini_zoo/")
def test_demo_runs_the_study_on_the_miniature_zoo(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--images", "8", "--attack-iter", "5", "--out", str(out), "--visualize", "1"]) == 0
    blocks = pd.read_csv(out / "blocks.csv")
    shipped = mini_available()
    assert set(blocks.model) == set(shipped)
    depth = {name: len(blocks[(blocks.model == name) & (blocks.metric == "ssim") & (blocks.perturbation == "random")])
             for name in shipped}
    # --tap both: every block output, and the denoising operation after it where there is one
    denoising = {"ResNet": 0, "ResNetDenoise": 4, "ResNeXtDenoiseAll": sum(zoo.MINI["ResNeXtDenoiseAll"].arch.blocks_per_group)}
    assert depth == {name: sum(zoo.MINI[name].arch.blocks_per_group) + denoising[name] for name in shipped}
    assert {"amplification", "cka"} <= set(blocks.metric)
    assert set(pd.read_csv(out / "denoising.csv").model) == set(shipped) - {"ResNet"}
    assert (blocks.n_images == 8).all() and (blocks.height >= 7).all() and (blocks.width >= 7).all()
    for name in ["fig5_2.png", "fig5_2.pdf", "summary.csv", "images.csv", "report.html", "contrasts.png",
                 "denoising.png", "whole_map.png"] + \
            ["fig5_1_{}.png".format(m) for m in shipped] + ["feature_maps_{}.png".format(m) for m in shipped]:
        assert (out / name).stat().st_size > 0, name
    manifest = json.loads((out / "manifest.json").read_text())
    for name in shipped:
        check = manifest["models"][name]["clean_check"]
        assert check["published_accuracy"] is not None and check["images"] == 8
