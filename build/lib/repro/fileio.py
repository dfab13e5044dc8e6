"""Atomic file writes: every result, table and checkpoint the project writes appears whole or not at all.

A run killed mid-write leaves either the previous file or the new one, never a torn one — which is what
lets a killed study resume from its committed batches (`repro.runner`).
"""
import os
import tempfile
from pathlib import Path


def _temporary_beside(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")


def _publish(temporary, path):
    """Give the temporary file ordinary permissions (0666 less the umask; mkstemp's 0600 would make it
    private) and rename it to ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def atomic_write(path, write, binary=False, sync=False):
    """Create ``path`` by ``write(stream)`` into a temporary file in the same directory, then rename.

    The file gets ordinary permissions (0666 less the umask; mkstemp's 0600 would make it private);
    ``sync`` flushes it to disk before the rename. Returns ``path``.
    """
    path = Path(path)
    handle, temporary = _temporary_beside(path)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            if sync:
                stream.flush()
                os.fsync(stream.fileno())
        _publish(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_all(writers):
    """Write several files, all or none: ``writers`` maps each path to ``write(stream)`` (binary streams).
    Every file is written to a temporary beside it first; only when all are written are they renamed,
    so a failure (a full disk, a failing writer) leaves none of them new. Returns the paths."""
    temporaries = []
    try:
        for path, write in writers.items():
            path = Path(path)
            handle, temporary = _temporary_beside(path)
            temporaries.append((temporary, path))
            with os.fdopen(handle, "wb") as stream:
                write(_TextOrBinary(stream))
        for temporary, path in temporaries:
            _publish(temporary, path)
    finally:
        for temporary, _ in temporaries:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return [path for _, path in temporaries]


class _TextOrBinary:
    """A binary stream that also takes str (as UTF-8), so writers of text and of NumPy arrays mix."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data):
        return self.stream.write(data.encode("utf-8") if isinstance(data, str) else data)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def atomic_write_text(path, text):
    """``atomic_write`` of a string."""
    return atomic_write(path, lambda stream: stream.write(text))
