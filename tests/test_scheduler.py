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
    killed = []
    original = scheduler.commit_outcome

    def commit_then_kill(work, model, first, last, outcome, *args, **kwargs):
        original(work, model, first, last, outcome, *args, **kwargs)
        if not killed:
            this = int(outcome.info["worker"].split("pid ")[1].split(" ")[0])
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
    workers = json.loads((tmp_path / "manifest.json").read_text())["computed_by"]
    assert any("pid {} ".format(killed[0]) not in where for batches in workers.values() for where in batches.values())


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
