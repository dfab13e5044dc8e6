#!/usr/bin/env python
"""Seconds per image·step of the study's targeted PGD attack (TensorFlow engine), per model and configuration.

    python scripts/bench_attack.py --zoo mini --model ResNet ResNetDenoise ResNeXtDenoiseAll --xla off on
    python scripts/bench_attack.py --model ResNet ResNeXtDenoiseAll --batch 2 --steps 3      # full size, synthetic
    python scripts/bench_attack.py --zoo mini --model ResNet --threads 1 2 --batch 10 20 40 --markdown docs/performance.md

Every configuration — model × threads × XLA × precision × batch — runs in its own child process, because XLA
(``TF_XLA_FLAGS``) must be set before TensorFlow is imported and the thread pools when the session is made
(``$REPRO_THREADS``, as ``evaluate.py --workers`` sets them). A child builds the study's graph
(`repro.engines.tensorflow.study_graph.StudyGraph`, the graph ``evaluate.py`` runs), restores the checkpoint (the shipped one for the
miniature zoo, a synthetic one with the real variable names for the ImageNet zoo: timings do not depend on
the weights), runs the attack once to warm up and then ``--repeats`` times; the figure is the best of those
runs divided by batch × steps. ``--rounds R`` runs the whole list of configurations R times, interleaved, and
keeps each configuration's best round, so a burst of load from another process spoils one round, not one
configuration. ``--markdown FILE`` appends the table with the command, machine and date to FILE.

The original code's attack is not run here (none of its code is in this project); docs/performance.md gives
the side-by-side comparison with it, measured outside the project on the same synthetic weights.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import append_markdown, best_of, study_inputs  # noqa: E402

XLA_FLAGS = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"
PRECISIONS = ("float32", "tf32", "bf16", "fp16")


def child(arguments):
    """One configuration: build, restore, warm up, time; print one JSON line."""
    from repro import engines, zoo
    from repro.protocol import StudyConfig

    spec = zoo.get_model(arguments["model"], arguments["zoo"])
    steps, batch = arguments["steps"], arguments["batch"]
    config = StudyConfig(attack_iterations=steps, attack_chunk=steps)
    began = time.perf_counter()
    study = engines.study("tensorflow", spec, arguments["checkpoint"], config, precision=arguments["precision"])
    build = time.perf_counter() - began
    _, clean, start, targets = study_inputs(spec, batch, epsilon_pixels=config.epsilon)
    try:
        seconds = best_of(lambda: study.attack_steps(clean, start, targets, steps), arguments["repeats"])
    finally:
        study.close()
    print(json.dumps({"seconds": seconds, "build_restore": build}), flush=True)


def checkpoint_for(spec, scratch):
    """The shipped checkpoint of a miniature model, else a synthetic one with the checkpoint's names."""
    if spec.bundled_dir:
        from repro import cli
        return str(cli.checkpoint_path(spec))
    from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
    return str(write_synthetic_checkpoint(spec, Path(scratch) / (spec.name + ".npz")))


def run_configuration(configuration, checkpoint, args):
    environment = dict(os.environ)
    environment.pop("TF_XLA_FLAGS", None)
    environment.pop("REPRO_THREADS", None)
    if configuration["xla"] == "on":
        environment["TF_XLA_FLAGS"] = XLA_FLAGS
    if configuration["threads"]:
        environment["REPRO_THREADS"] = str(configuration["threads"])
    request = dict(configuration, zoo=args.zoo, checkpoint=checkpoint, steps=args.steps, repeats=args.repeats)
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], env=environment,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or ["exit status {}".format(completed.returncode)]
        return {"error": lines[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def describe(configuration):
    return "{model} batch {batch}, threads {threads}, XLA {xla}, {precision}".format(
        **dict(configuration, threads=configuration["threads"] or "default"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="imagenet", choices=("imagenet", "mini"))
    parser.add_argument("--model", nargs="+", default=["ResNet"])
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="images per attack run (default: 2 for the ImageNet zoo, 20 for the mini zoo)")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps per run (default: 3 / 10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="intra- and inter-op threads ($REPRO_THREADS); 0: TensorFlow's default")
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off"])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    mini = args.zoo == "mini"
    args.batch = args.batch or [20 if mini else 2]
    args.steps = args.steps or (10 if mini else 3)

    from repro import zoo
    configurations = [dict(model=model, batch=batch, threads=threads, xla=xla, precision=precision)
                      for model, batch, threads, xla, precision in itertools.product(
                          args.model, args.batch, args.threads, args.xla, args.precision)]
    results = {index: [] for index in range(len(configurations))}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = {name: checkpoint_for(zoo.get_model(name, args.zoo), scratch) for name in args.model}
        for round_index in range(args.rounds):
            for index, configuration in enumerate(configurations):
                result = run_configuration(configuration, checkpoints[configuration["model"]], args)
                if "seconds" in result:
                    result["per_image_step"] = result["seconds"] / (configuration["batch"] * args.steps)
                print("round {}/{} · {}: {}".format(round_index + 1, args.rounds, describe(configuration),
                                                     result.get("per_image_step", result.get("error"))), flush=True)
                results[index].append(result)
    # Each configuration's fastest round; a configuration that never ran shows its last error.
    best = {index: min(runs, key=lambda run: run.get("per_image_step", float("inf"))) for index, runs in results.items()}

    lines = ["| model | batch | threads | XLA | precision | s per image·step | build + restore s |",
             "|---|---|---|---|---|---|---|"]
    for index, configuration in enumerate(configurations):
        result = best[index]
        figure = "{:.4g}".format(result["per_image_step"]) if "per_image_step" in result \
            else "failed: " + result["error"].replace("|", "/")
        lines.append("| {model} | {batch} | {threads} | {xla} | {precision} | {figure} | {build} |".format(
            figure=figure, build="{:.1f}".format(result["build_restore"]) if "build_restore" in result else "",
            **dict(configuration, threads=configuration["threads"] or "default")))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        append_markdown(args.markdown, "attack, TensorFlow engine", "bench_attack.py", argv,
                        "{} zoo, {} steps per run, best of {} runs after a warm-up, best of {} interleaved "
                        "round(s)".format(args.zoo, args.steps, args.repeats, args.rounds), table)
    return 0 if all("per_image_step" in result for result in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
