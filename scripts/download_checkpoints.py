#!/usr/bin/env python
"""Download the released ImageNet checkpoints into checkpoints/, resumably (the code: `repro.download`).

    python scripts/download_checkpoints.py [--model NAME …] [--url URL] [--dir DIR]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro.download import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
