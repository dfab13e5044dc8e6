"""``python -m repro <command> [options]``: the same commands as repro-evaluate, repro-validate,
repro-predict, repro-download and repro-report."""
import sys

COMMANDS = {"evaluate": ("repro.evaluate", "the study: perturb, tap every block, measure"),
            "validate": ("repro.validation", "checkpoints against the published numbers"),
            "predict": ("repro.predict", "classify images"),
            "download": ("repro.download", "download the released ImageNet checkpoints"),
            "report": ("repro.report", "a self-contained report.html of a study's output folder")}


def main(argv=None):
    import importlib
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m repro {{{}}} [options]\n\n{}".format(",".join(COMMANDS), "\n".join(
            "  {:9} {}".format(name, text) for name, (_, text) in COMMANDS.items())), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = ["repro-" + argv[0]] + argv[1:]
    if argv[0] == "download":
        return module.main(argv[1:])
    from repro import cli
    return cli.run_main(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
