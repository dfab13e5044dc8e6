"""Where batches run (`repro.scheduler`): local Ray actors give the tables of one process, survive an actor
killed mid-run without counting a batch twice, and report a batch that keeps failing in one line; SLURM array
tasks compute their share and `--aggregate-only` merges them into the tables of one run."""
import json
import os
import signal

import pandas as pd
import pytest

from repro import cli, evaluate, scheduler

COMMON = ["--zoo", "mini", "--model", "ResNet", "ResNeXtDenoiseAll", "--images", "8", "--batch", "2",
          "--attack-iter", "3"]


def tables(out):
    return {name: pd.read_csv(out / name) for name in ("blocks.csv", "images.csv", "summary.csv")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process")
    assert cli.run_main(evaluate.main, COMMON + ["--out", str(out)]) == 0
    return tables(out)


def test_an_actor_killed_mid_run_changes_nothing(tmp_path, reference, monkeypatch):
    """After the first commit, the test kills (SIGKILL) the other actor while it computes; Ray restarts it and
    retries its batch: the tables equal one process's, each image once."""
    import psutil
    killed, killed_slots = [], []
    original = scheduler.commit_outcome

    def commit_then_kill(work, model, first, last, outcome, *args, **kwargs):
        original(work, model, first, last, outcome, *args, **kwargs)
        if not killed:
            this = int(outcome.info["worker"].split("pid ")[1].split(" ")[0])
            killed_slots.append(1 - int(outcome.info["worker"].split()[1]))     # two slots: 0 and 1
            for process in psutil.process_iter(["pid", "name", "cmdline"]):
                title = " ".join(process.info["cmdline"] or []) + (process.info["name"] or "")
                if "StudyActor" in title and process.info["pid"] != this:
                    os.kill(process.info["pid"], signal.SIGKILL)
                    killed.append(process.info["pid"])
                    break
    monkeypatch.setattr(scheduler, "commit_outcome", commit_then_kill)
    assert cli.run_main(evaluate.main, COMMON + ["--out", str(tmp_path), "--workers", "2"]) == 0
    assert killed, "no busy actor process was found to kill"
    result = tables(tmp_path)
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(result[name], reference[name])
    assert not result["images.csv"].duplicated(["model", "image"]).any()
    assert (result["blocks.csv"].n_images == 8).all()
    # The killed actor committed nothing (it died computing); its slot's batch was computed again by the
    # restarted actor of that slot — another process — and every batch is in the tables once.
    workers = json.loads((tmp_path / "manifest.json").read_text())["computed_by"]
    places = [where for batches in workers.values() for where in batches.values()]
    assert len(places) == 8 and not any("pid {} ".format(killed[0]) in where for where in places)
    killed_slot = killed_slots[0]
    assert any(where.startswith("slot {} (pid ".format(killed_slot)) for where in places), places


def test_a_batch_that_keeps_failing_is_one_line(tmp_path, capsys, monkeypatch):
    """Actors that die on every batch (os._exit in the actor process, installed through sitecustomize): after
    the retries, one line names the batch; nothing is committed for it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import importlib.abc, os, sys\n"
        "class Crash(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'repro.scheduler':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        import importlib.util\n"
        "        spec = importlib.util.find_spec(name)\n"
        "        loader = spec.loader\n"
        "        class Patched(type(loader)):\n"
        "            def exec_module(self, module):\n"
        "                super().exec_module(module)\n"
        "                module.ModelWorker.compute = lambda *a, **k: os._exit(3)\n"
        "        spec.loader = Patched(loader.name, loader.path)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Crash())\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))
    argv = ["--zoo", "mini", "--model", "ResNet", "--images", "2", "--batch", "2", "--attack-iter", "1",
            "--out", str(tmp_path / "out"), "--workers", "1"]
    assert cli.run_main(evaluate.main, argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "batch 0-1 of ResNet failed: its Ray worker died" in errors[0], errors
    assert "re-run the same command to resume" in errors[0]
    assert not list((tmp_path / "out" / "work" / "ResNet").glob("batch-*.json"))


def test_slurm_array_tasks_then_aggregate_only_equal_one_run(tmp_path, reference, monkeypatch):
    out = tmp_path / "shared"
    for task in (4, 5, 6):                                  # an array 4-6: three shards
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        assert cli.run_main(evaluate.main, COMMON + ["--out", str(out), "--shard", "slurm"]) == 0
        shard = json.loads((out / "manifest.json").read_text())["shard"]
        assert shard == [task - 4, 3]
        mine = {b for b in json.loads((out / "manifest.json").read_text())["computed_by"]["ResNet"]}
        assert {"{}-{}".format(2 * i, 2 * i + 1) for i in range(task - 4, 4, 3)} <= mine
    assert cli.run_main(evaluate.main, COMMON + ["--out", str(out), "--aggregate-only"]) == 0
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(tables(out)[name], reference[name], check_exact=False, rtol=1e-12)


def test_slurm_shard_needs_the_array_environment():
    assert evaluate.slurm_shard({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4",
                                 "SLURM_ARRAY_TASK_MIN": "5"}) == (2, 4)
    assert evaluate.slurm_shard({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}) == (0, 1)
    with pytest.raises(Exception, match="needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"):
        evaluate.slurm_shard({})


def test_actors_ask_for_one_gpu_each_where_there_are_gpus():
    assert scheduler.worker_resources({"CPU": 16, "GPU": 4}, 4) == ({"num_gpus": 1, "num_cpus": 1}, 4)
    assert scheduler.worker_resources({"CPU": 2}, 2) == ({"num_cpus": 1}, 1)
    assert scheduler.worker_resources({"CPU": 8}, 3) == ({"num_cpus": 2}, 2)
    assert [scheduler.placeable_workers(cluster) for cluster in ({"CPU": 16, "GPU": 4}, {"CPU": 2}, {"CPU": 2.0, "GPU": 0})] \
        == [4, 2, 2]


def test_a_free_actor_keeps_its_model_then_takes_one_no_other_actor_holds():
    queue = [("ResNet", 0, 49), ("ResNet", 50, 99), ("ResNetDenoise", 0, 49), ("ResNeXtDenoiseAll", 0, 49)]
    assert scheduler.next_batch(queue, "ResNetDenoise", {"ResNet"}) == ("ResNetDenoise", 0, 49)
    assert scheduler.next_batch(queue, None, {"ResNet"}) == ("ResNetDenoise", 0, 49)
    assert scheduler.next_batch(queue, "ResNet", set()) == ("ResNet", 0, 49)
    assert scheduler.next_batch(queue, "ResNetDenoise", {"ResNet", "ResNeXtDenoiseAll"}) == ("ResNetDenoise", 0, 49)
    assert scheduler.next_batch(queue[:2], "VGG", {"ResNet"}) == ("ResNet", 0, 49)      # all held: the first


def test_make_demo_builds_each_model_on_one_actor():
    """`run_ray`'s loop on make demo's plan (3 models × 2 batches, 2 actors; attack seconds per batch measured on
    2 cores): each model is built on one actor, not on both (6 builds and metric compilations of ~9 s each)."""
    seconds = {"ResNet": 25, "ResNetDenoise": 82, "ResNeXtDenoiseAll": 47}
    queue = [(model, first, first + 49) for model in seconds for first in (0, 50)]
    clock, holding, built = {0: 0, 1: 0}, {}, set()
    while queue:
        actor = min(clock, key=lambda slot: (clock[slot], slot))
        item = scheduler.next_batch(queue, holding.get(actor), {m for a, m in holding.items() if a != actor})
        queue.remove(item)
        holding[actor] = item[0]
        built.add((actor, item[0]))
        clock[actor] += seconds[item[0]]
    assert sorted(model for _, model in built) == sorted(seconds)
    assert sorted(clock.values()) == [25 * 2 + 47 * 2, 82 * 2]


@pytest.mark.parametrize("engine", ["tensorflow", "torch"])
def test_memory_stays_flat_in_the_number_of_batches(engine):
    """12 more batches after a warm-up leave no Python-level memory behind (NumPy arrays included, which
    tracemalloc sees), no new graph ops (TensorFlow) and no live tensors (PyTorch): nothing accumulates per
    image. An accumulating list of each batch's adversarial images alone would add 1.5 MB here."""
    import gc
    import tracemalloc
    import warnings

    from repro import checkpoints, zoo
    from repro.protocol import StudyConfig
    if engine == "torch":
        torch = __import__("torch") if os.environ.get("REPRO_REQUIRE_TORCH") else pytest.importorskip("torch")
    spec = zoo.get_model("ResNet", "mini")
    path = cli.checkpoint_path(spec)
    plan = scheduler.RunPlan(specs=[spec], checkpoints={"ResNet": (str(path), checkpoints.sha256_of(path))},
                             config=StudyConfig(attack_iterations=1, metrics=("mse", "ssim")), engine=engine,
                             images=200)
    worker = scheduler.ModelWorker(plan, "ResNet")
    try:
        for index in range(3):
            worker.compute(10 * index, 10 * index + 9)

        def live_state():
            if engine == "torch":
                with warnings.catch_warnings():  # isinstance touches deprecated torch.distributed attributes
                    warnings.simplefilter("ignore")
                    return sum(1 for thing in gc.get_objects() if isinstance(thing, torch.Tensor))
            return len(worker.study.graph.get_operations())
        gc.collect()
        state = live_state()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for index in range(3, 15):
            worker.compute(10 * index, 10 * index + 9)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert growth < 256 * 1024, "{} KB left behind by 12 batches".format(growth // 1024)
        assert live_state() == state
    finally:
        worker.close()


def out_of_memory_error(engine):
    """The framework's own out-of-memory exception, as a device would raise it."""
    if engine == "torch":
        torch = __import__("torch") if os.environ.get("REPRO_REQUIRE_TORCH") else pytest.importorskip("torch")
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    from repro.engines.tensorflow.tfcompat import tf
    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[300,256,56,56]")


def study_class(engine):
    if engine == "torch":
        from repro.engines.torch.engine import TorchStudy
        return TorchStudy
    from repro.engines.tensorflow.study_graph import StudyGraph
    return StudyGraph


@pytest.mark.parametrize("engine", ["tensorflow", "torch"])
def test_a_batch_that_does_not_fit_is_computed_in_halves_with_the_numbers_of_a_smaller_batch(tmp_path, engine,
                                                                                            monkeypatch, caplog, capsys):
    """The framework's out-of-memory error (injected where more than 2 images go through the tapped forward pass):
    the batch of 4 is computed as 2 + 2, one warning says so, the receipt records the split, and the tables are
    those of a run with --batch 2. When one image does not fit, one line names model, device and memory, and the
    batches committed before are kept."""
    error, cls = out_of_memory_error(engine), study_class(engine)
    measure = cls.measure

    def measure_or_run_out(self, clean, *args, **kwargs):
        if len(clean) > limit[0]:
            raise error
        return measure(self, clean, *args, **kwargs)
    limit = [2]
    monkeypatch.setattr(cls, "measure", measure_or_run_out)
    common = ["--zoo", "mini", "--model", "ResNet", "--images", "6", "--attack-iter", "2", "--metrics", "mse,ssim",
              "--engine", engine]
    assert cli.run_main(evaluate.main, common + ["--batch", "4", "--out", str(tmp_path / "split")]) == 0
    assert "ResNet: images 0–3 do not fit in memory on cpu: " in caplog.text and "computing them in two halves" in caplog.text
    receipt = json.loads((tmp_path / "split" / "work" / "ResNet" / "batch-000000-000003.json").read_text())
    assert receipt["split"] == [[0, 1], [2, 3]]
    assert "split" not in json.loads((tmp_path / "split" / "work" / "ResNet" / "batch-000004-000005.json").read_text())
    assert cli.run_main(evaluate.main, common + ["--batch", "2", "--out", str(tmp_path / "small")]) == 0
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(tables(tmp_path / "split")[name], tables(tmp_path / "small")[name],
                                      check_exact=False, rtol=1e-9)
    limit[0] = 0                                                     # not even one image fits
    capsys.readouterr()
    out = tmp_path / "split"
    assert cli.run_main(evaluate.main, common + ["--images", "8", "--batch", "4", "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: ResNet: one image does not fit in memory on cpu: ")
    assert "GiB available of" in errors[0] and "the batches committed so far are kept" in errors[0]
    assert (out / "work" / "ResNet" / "batch-000000-000003.json").exists()


def test_out_of_memory_on_a_ray_worker_is_split_there_too(tmp_path, reference):
    """The split happens where the batch is computed: on the Ray actor (the out-of-memory error injected into the
    actors' processes through sitecustomize); the tables are still those of one process."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Inject(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'repro.engines.tensorflow.study_graph':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        import importlib.util\n"
        "        spec = importlib.util.find_spec(name)\n"
        "        loader = spec.loader\n"
        "        class Patched(type(loader)):\n"
        "            def exec_module(self, module):\n"
        "                super().exec_module(module)\n"
        "                measure = module.StudyGraph.measure\n"
        "                def measure_or_run_out(study, clean, *args, **kwargs):\n"
        "                    if len(clean) > 1:\n"
        "                        raise module.tf.errors.ResourceExhaustedError(None, None, 'OOM injected')\n"
        "                    return measure(study, clean, *args, **kwargs)\n"
        "                module.StudyGraph.measure = measure_or_run_out\n"
        "        spec.loader = Patched(loader.name, loader.path)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Inject())\n")
    environment = dict(os.environ, PYTHONPATH=str(hook))
    import subprocess
    import sys
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "repro/evaluate.py", *COMMON, "--workers", "2", "--out", str(out)],
                            cwd=str(evaluate.zoo.REPO_ROOT), env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    receipts = [json.loads(path.read_text()) for path in (out / "work").glob("*/batch-*.json")]
    assert receipts and all(receipt.get("split") == [[b[0], b[0]], [b[1], b[1]]]
                            for receipt in receipts for b in [receipt["batch"]])
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(tables(out)[name], reference[name], check_exact=False, rtol=1e-9)
