"""validation (repro/validate.py): interval arithmetic by hand, verdicts, and (miniature zoo) each shipped model passes its own
model card while a damaged copy fails."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from repro import checkpoints, cli, validation, zoo
from repro.aggregate import wilson_interval

Z = 1.959963984540054


def test_wilson_interval_by_hand():
    # 37 of 100: centre (p + z²/2n)/(1 + z²/n), half-width z·√(p(1−p)/n + z²/4n²)/(1 + z²/n).
    p, n = 0.37, 100
    denominator = 1 + Z ** 2 / n
    centre = (p + Z ** 2 / (2 * n)) / denominator
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n * n)) / denominator
    assert wilson_interval(37, 100) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(37, 100) == pytest.approx((0.2818, 0.4678), abs=1e-4)   # 28.18%–46.78%
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(0, 10)[1] == pytest.approx(Z ** 2 / (10 + Z ** 2))


def test_verdict_widens_the_interval_by_the_published_fluctuation():
    assert validation.verdict(30.0, 37.4, 37.7, 0.3) == "PASS"        # 37.7 ≤ 37.4 + 0.3
    assert validation.verdict(30.0, 37.39, 37.7, 0.3) == "FAIL"
    assert validation.verdict(38.0, 45.0, 37.7, 0.3) == "PASS"        # 37.7 ≥ 38.0 − 0.3
    assert validation.verdict(38.01, 45.0, 37.7, 0.3) == "FAIL"
    assert validation.verdict(0.0, 100.0, None, 0.3) == "n/a"


def test_results_table_counts_errors_and_successes():
    spec = zoo.get_model("ResNet")
    records = pd.DataFrame({"label": [1, 2, 3, 4], "top1": [1, 9, 3, 7], "target": [5, 9, 8, 7],
                            "top5_hit": [True, True, False, True]})
    attacked = {row["quantity"]: row for row in validation.results_table(spec, 10, records)}
    assert attacked["top1_error"]["count"] == 2 and attacked["top1_error"]["measured"] == 50.0
    assert attacked["top1_error"]["published"] == 47.5 and attacked["top1_error"]["verdict"] == "PASS"
    assert attacked["attack_success"]["count"] == 2 and attacked["attack_success"]["published"] == 5.5
    low, high = wilson_interval(2, 4)
    assert attacked["attack_success"]["ci95_low"] == pytest.approx(100 * low)
    clean = {row["quantity"]: row for row in validation.results_table(spec, 0, records)}
    assert clean["top5_error"]["count"] == 1 and clean["top5_error"]["verdict"] == "n/a"
    # the untargeted attack succeeds where top-1 is not the label; the published success is the targeted attack's
    untargeted = {row["quantity"]: row for row in validation.results_table(
        spec, 10, records.assign(target=-1), attack="untargeted")}
    assert untargeted["attack_success"]["count"] == 2 and untargeted["attack_success"]["published"] is None
    assert untargeted["attack_success"]["verdict"] == "n/a"
    cw = {row["quantity"]: row for row in validation.results_table(spec, 10, records, attack="cw")}
    assert cw["attack_success"]["count"] == 2 and cw["attack_success"]["published"] is None


def mini_available():
    """The miniature models whose checkpoint and model card are in mini_zoo/."""
    return [name for name, spec in zoo.MINI.items()
            if (zoo.REPO_ROOT / "mini_zoo" / spec.checkpoint).is_file() and zoo.model_card_path(spec).is_file()]


needs_mini = pytest.mark.skipif(not mini_available(), reason="no miniature checkpoint in mini_zoo/")


@needs_mini
@pytest.mark.parametrize("iterations,limit", [(0, None), (10, 200)])
def test_each_shipped_mini_model_passes_its_model_card(iterations, limit, tmp_path, capsys):
    argv = ["--zoo", "mini", "--model", *mini_available(), "--attack-iter", str(iterations), "--out", str(tmp_path),
            "--batch", "100"]
    if limit:
        argv += ["--limit", str(limit)]
    assert cli.run_main(validation.main, argv) == 0
    table = pd.read_csv(tmp_path / "validate-mini-k{}.csv".format(iterations))
    assert set(table.model) == set(mini_available()) and (table.verdict != "FAIL").all()
    if iterations == 0:     # on the same images as the model card (its first n): exactly the card's number
        for spec in map(zoo.MINI.get, mini_available()):
            row = table[(table.model == spec.name) & (table.quantity == "top1_error")].iloc[0]
            card = json.loads(zoo.model_card_path(spec).read_text())["evaluation"]
            if card["n"] == row.n:
                assert row.measured == pytest.approx(zoo.published_numbers(spec)[0].top1_error, abs=1e-9)
    assert "all checks passed" in capsys.readouterr().out


@needs_mini
def test_a_damaged_checkpoint_fails_with_a_non_zero_exit(tmp_path, capsys):
    spec = zoo.get_model("ResNet", "mini")
    arrays = dict(checkpoints.read_checkpoint(zoo.REPO_ROOT / "mini_zoo" / spec.checkpoint).arrays)
    rng = np.random.default_rng(0)
    for name in list(arrays):
        if name.endswith("/mean/EMA") or name.endswith("/variance/EMA"):
            arrays[name] = rng.permutation(arrays[name])                   # scrambled BatchNorm statistics
    damaged = checkpoints.save_checkpoint(arrays, tmp_path / "damaged.npz")
    status = cli.run_main(validation.main, ["--zoo", "mini", "--model", "ResNet", "--load", str(damaged),
                                          "--out", str(tmp_path / "o"), "--limit", "300", "--batch", "100"])
    assert status == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 check(s) FAILED" in out


@needs_mini
def test_an_interrupted_validation_continues_where_it_stopped(tmp_path, monkeypatch):
    from repro.engines.tensorflow import classifier_graph as classifier
    original, calls = classifier.Classifier.predict_logits, {"n": 0}

    def dies_on_third_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    argv = ["--zoo", "mini", "--model", "ResNet", "--limit", "100", "--batch", "20", "--out", str(tmp_path)]
    monkeypatch.setattr(classifier.Classifier, "predict_logits", dies_on_third_batch)
    assert cli.run_main(validation.main, argv) == 130
    assert len(list(tmp_path.glob("work/*/batch-*.csv"))) == 2
    monkeypatch.setattr(classifier.Classifier, "predict_logits", original)
    resumed = [("30" if previous == "--batch" else value) for previous, value in zip([None] + argv, argv)]
    assert cli.run_main(validation.main, resumed) == 0                         # another --batch: no image twice
    table = pd.read_csv(tmp_path / "validate-mini-k0.csv")
    assert table.n.eq(100).all()
    reference = tmp_path / "fresh"
    assert cli.run_main(validation.main, argv[:-1] + [str(reference)]) == 0
    pd.testing.assert_frame_equal(table, pd.read_csv(reference / "validate-mini-k0.csv"))


@needs_mini
def test_records_of_another_checkpoint_limit_or_batch_are_never_reused_or_double_counted(tmp_path, capsys):
    """Checkpoint A then a damaged B into the same --out: B gets its own numbers (and FAILs). A smaller
    --limit with another --batch reports exactly its images, equal to a fresh run."""
    spec = zoo.get_model("ResNet", "mini")
    rng = np.random.default_rng(0)
    arrays = dict(checkpoints.read_checkpoint(zoo.REPO_ROOT / "mini_zoo" / spec.checkpoint).arrays)
    for name in list(arrays):
        if name.endswith("/mean/EMA") or name.endswith("/variance/EMA"):
            arrays[name] = rng.permutation(arrays[name])
    damaged = checkpoints.save_checkpoint(arrays, tmp_path / "damaged.npz")
    out = tmp_path / "o"

    def table(*extra, where=out):
        status = cli.run_main(validation.main, ["--zoo", "mini", "--model", "ResNet", "--out", str(where), *extra])
        return status, pd.read_csv(where / "validate-mini-k0.csv").set_index("quantity")

    status, good = table("--limit", "300", "--batch", "100")
    assert status == 0 and good.loc["top1_error", "verdict"] == "PASS"
    status, bad = table("--limit", "300", "--batch", "100", "--load", str(damaged))
    assert status == 1 and bad.loc["top1_error", "verdict"] == "FAIL"
    assert bad.loc["top1_error", "count"] != good.loc["top1_error", "count"]

    status, smaller = table("--limit", "120", "--batch", "70")             # a prefix, another batch size
    _, fresh = table("--limit", "120", "--batch", "50", where=tmp_path / "fresh")
    assert smaller.loc["top1_error", "n"] == 120
    pd.testing.assert_frame_equal(smaller, fresh)
    folders = sorted(out.glob("work/mini-ResNet-k0-*"))
    assert len(folders) == 2                                                  # one per checkpoint
    for folder in folders:
        records = pd.concat(pd.read_csv(p) for p in folder.glob("batch-*.csv"))
        assert len(records) == records.image.nunique() == 300                # each image once


@needs_mini
def test_a_validation_folder_is_keyed_on_what_determines_its_records(tmp_path):
    from repro import runner
    spec = zoo.get_model("ResNet", "mini")
    selection = runner.image_selection(spec, None, 10)
    one = validation.validation_identity(spec, "11" * 32, selection, 10, seed=0)
    for other in (validation.validation_identity(spec, "22" * 32, selection, 10, seed=0),
                  validation.validation_identity(spec, "11" * 32, selection, 10, seed=1),
                  validation.validation_identity(spec, "11" * 32, selection, 100, seed=0),
                  validation.validation_identity(spec, "11" * 32, selection, 10, seed=0, attack="cw")):
        assert validation.Progress(tmp_path, one).directory != validation.Progress(tmp_path, other).directory
    assert validation.Progress(tmp_path, one).directory == validation.Progress(
        tmp_path, validation.validation_identity(spec, "11" * 32, runner.image_selection(spec, None, 20), 10, 0)).directory
