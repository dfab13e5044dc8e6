"""runner: the batch plan, receipts that record what made a batch, and the refusals and repairs built on them."""
import json

import numpy as np
import pandas as pd
import pytest

from repro import aggregate, runner, zoo
from repro.protocol import StudyConfig

SETTINGS = runner.result_config(StudyConfig(attack_iterations=5), "rule", 2, {"dataset": "mini test split",
                                                                               "sha256": "ab" * 32})


def identity(spec=None, sha="11" * 32, settings=SETTINGS, images=((0, "a.png", 3), (1, "b.png", 7))):
    spec = spec or zoo.get_model("ResNet", "mini")
    return {"settings": settings, "model": runner.model_identity(spec, sha),
            "images": runner.json_form([list(row) for row in images])}


def commit(work, model="ResNet", first=0, last=1, ident=None):
    statistics = aggregate.BlockStatistics(sources=["{}:{}-{}".format(model, first, last)])
    count = last - first + 1
    statistics.add(model, "adversarial", "mse", 1, np.arange(3.0 * count).reshape(count, 3))
    records = pd.DataFrame({"model": model, "image": list(range(first, last + 1)), "path": "p", "label": 1,
                            "target": 2, "pred_clean": 1, "pred_random": 1, "pred_adversarial": 2,
                            "attack_success": True, "error": ""})
    work.commit_batch(model, first, last, records, statistics, {"images": 2}, ident or identity())


def test_batch_plan_covers_each_image_once_and_shards_partition_it():
    assert runner.batch_plan(5, 2) == [(0, 1), (2, 3), (4, 4)]
    assert runner.batch_plan(6, 2)[:2] == runner.batch_plan(5, 2)[:2]          # a prefix, but for the partial batch
    shards = [runner.batch_plan(7, 2, (i, 3)) for i in range(3)]
    assert sorted(b for shard in shards for b in shard) == runner.batch_plan(7, 2)


def test_a_committed_batch_verifies_and_a_damaged_one_is_named(tmp_path):
    work = runner.WorkDirectory(tmp_path, SETTINGS)
    assert work.receipt("ResNet", 0, 1) is None
    commit(work)
    receipt = work.check_batch("ResNet", 0, 1, identity())
    csv, npz, _ = work.batch_files("ResNet", 0, 1)
    assert receipt["files"]["npz"] == runner._file_sha256(npz) and receipt["identity"] == identity()
    with open(npz, "r+b") as stream:                                         # a torn or truncated file
        stream.truncate(npz.stat().st_size // 2)
    with pytest.raises(runner.DamagedBatch, match=r"batch-000000-000001.npz: its SHA-256 differs"):
        work.receipt("ResNet", 0, 1)
    with pytest.raises(runner.DamagedBatch, match="re-run the study command"):
        runner.resume_state(work, "ResNet", [(0, 1)], lambda *b: identity(), recompute_damaged=False)
    done, pending = runner.resume_state(work, "ResNet", [(0, 1)], lambda *b: identity())
    assert done == {} and pending == [(0, 1)] and not csv.exists() and not npz.exists()


@pytest.mark.parametrize("change,expected", [
    (dict(sha="22" * 32), "model.checkpoint_sha256: 111111111111… → 222222222222…"),
    (dict(spec=zoo.get_model("ResNet", depth=50)), "model.depth: 44 → 50"),
    (dict(settings=dict(SETTINGS, attack_iterations=6)), "attack_iterations: 5 → 6"),
    (dict(settings=dict(SETTINGS, data={"dataset": "imagenet val", "folder": "/x"})), "data.dataset"),
    (dict(images=((0, "a.png", 3), (1, "c.png", 7))), "image 1: b.png (label 7) → c.png (label 7)"),
])
def test_a_batch_computed_differently_is_refused_naming_file_and_difference(tmp_path, change, expected):
    work = runner.WorkDirectory(tmp_path, SETTINGS)
    commit(work)
    with pytest.raises(runner.RunConfigMismatch) as error:
        runner.resume_state(work, "ResNet", [(0, 1)], lambda *b: identity(**change))
    assert "batch-000000-000001.json was computed differently" in str(error.value) and expected in str(error.value)


def test_unknown_parts_of_the_identity_are_not_compared_but_must_agree_between_batches(tmp_path):
    """--aggregate-only knows neither the checkpoint nor the images: it compares the rest, and the batches
    must agree with each other."""
    work = runner.WorkDirectory(tmp_path, SETTINGS)
    commit(work, first=0, last=1)
    commit(work, first=2, last=3, ident=identity(sha="22" * 32, images=((2, "c", 1), (3, "d", 1))))
    unknown = dict(identity(sha=None), images=None)
    done, pending = runner.resume_state(work, "ResNet", [(0, 1), (2, 3)], lambda *b: unknown)
    assert len(done) == 2 and not pending
    with pytest.raises(runner.RunConfigMismatch, match="batch-000000-000001 and batch-000002-000003 were computed "
                                                       "differently .model.checkpoint_sha256"):
        runner.check_uniform(done, "ResNet")


def test_a_receipt_without_provenance_is_refused(tmp_path):
    work = runner.WorkDirectory(tmp_path, SETTINGS)
    commit(work)
    receipt_path = work.batch_files("ResNet", 0, 1)[2]
    receipt_path.write_text(json.dumps({"images": 2, "timings": {}}))      # what earlier versions wrote
    with pytest.raises(runner.RunConfigMismatch, match="older version of this tool"):
        work.receipt("ResNet", 0, 1)


def test_the_folder_is_claimed_only_by_claim_and_other_settings_are_named(tmp_path):
    work = runner.WorkDirectory(tmp_path / "out", SETTINGS)
    assert not (tmp_path / "out").exists()
    work.claim()
    runner.WorkDirectory(tmp_path / "out", SETTINGS).claim()                 # same settings: fine
    with pytest.raises(runner.RunConfigMismatch, match=r"different settings \(epsilon: 16.0 → 8.0\)"):
        runner.WorkDirectory(tmp_path / "out", dict(SETTINGS, epsilon=8.0)).claim()


def test_tables_hold_exactly_the_batches_asked_for(tmp_path):
    work = runner.WorkDirectory(tmp_path, SETTINGS)
    work.save_block_table("ResNet", [dict(model="ResNet", block_index=1, depth_from_end=0, group=0, block=0,
                                          tap="t", channels=3, height=4, width=4)])
    commit(work, first=0, last=1)
    commit(work, first=2, last=3)
    commit(work, first=2, last=2)            # left over from a selection of 3 images
    for batches, expected in (([(0, 1), (2, 3)], [0, 1, 2, 3]), ([(0, 1), (2, 2)], [0, 1, 2])):
        blocks, images = runner.write_tables(work, {"ResNet": batches}, tmp_path)[:2]
        assert blocks.n_images.tolist() == [len(expected)] and images.image.tolist() == expected


def test_the_paper_figures_of_a_both_taps_run_show_the_block_outputs_numbered_as_blocks():
    taps = ["group0/block0/block_output", "group0/block0/non_local/add", "group0/block1/block_output",
            "group0/block1/non_local/add", "group1/block0/block_output", "group1/block0/non_local/add"]
    both = pd.DataFrame({"model": "A", "perturbation": "random", "metric": "mse", "block_index": range(1, 7),
                         "depth_from_end": range(5, -1, -1), "tap": taps, "mean": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]})
    denoised = both.iloc[[1, 3, 5]].assign(model="B", block_index=[1, 2, 3], depth_from_end=[2, 1, 0])
    shown = runner.block_output_rows(pd.concat([both, denoised], ignore_index=True))
    a = shown[shown.model == "A"]
    assert a.tap.tolist() == taps[::2] and a["mean"].tolist() == [1.0, 2.0, 3.0]
    assert a.block_index.tolist() == [1, 2, 3] and a.depth_from_end.tolist() == [2, 1, 0]
    pd.testing.assert_frame_equal(shown[shown.model == "B"].reset_index(drop=True), denoised.reset_index(drop=True))
