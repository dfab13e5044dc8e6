"""Validate checkpoints against the published numbers (the code: `repro.validation`).

    python repro/validate.py --model ResNet --data /path/to/ILSVRC2012 [--attack-iter 0|10|100|1000] [--limit N]
    python repro/validate.py --zoo mini --all --attack-iter 10        (installed: repro-validate …)
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: the repository on the path, not repro/ itself (whose modules would shadow others by name).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from repro import cli, validation
    sys.exit(cli.run_main(validation.main))
