"""Atomic file writes: every result, table and checkpoint the project writes appears whole or not at all.

A run killed mid-write leaves either the previous file or the new one, never a torn one — which is what
lets a killed study resume from its committed batches (`repro.runner`).
"""
import os
import tempfile
from pathlib import Path


def atomic_write(path, write, binary=False, sync=False):
    """Create ``path`` by ``write(stream)`` into a temporary file in the same directory, then rename.

    The file gets ordinary permissions (0666 less the umask; mkstemp's 0600 would make it private);
    ``sync`` flushes it to disk before the rename. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            if sync:
                stream.flush()
                os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path, text):
    """``atomic_write`` of a string."""
    return atomic_write(path, lambda stream: stream.write(text))
