#!/usr/bin/env python
"""Download the released ImageNet checkpoints (SPEC §1) into checkpoints/, resumably.

    python scripts/download_checkpoints.py                      # all models of the zoo (or: repro-download)
    python scripts/download_checkpoints.py --model ResNet ResNetDenoise
    python scripts/download_checkpoints.py --url https://host/file.npz --dir /tmp/ckpt

The URLs and file names come from the zoo (`repro.zoo.get_model(name).url` / `.checkpoint`); this
script only knows how to fetch a URL. A download is written to `<file>.part` and renamed to `<file>`
only when complete, so `<file>` existing means it is whole. An interrupted download is resumed from
the bytes already in `<file>.part` with an HTTP Range request. The SHA-256 of every completed file
is printed and recorded beside it as `<file>.sha256` in `sha256sum` format (`sha256sum -c` checks it).
"""
import argparse
import hashlib
import http.client
import os
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from repro.resources import checkpoint_dir

DEFAULT_DIR = checkpoint_dir()
CHUNK_SIZE = 1 << 20
TIMEOUT_SECONDS = 60
USER_AGENT = "repro-download-checkpoints/1 (python urllib)"


class DownloadError(Exception):
    """A download that could not finish; the message is one line saying what to do."""


def part_path(dest_path):
    """Where the bytes of an unfinished download of `dest_path` are kept between runs."""
    return pathlib.Path(str(dest_path) + ".part")


def sha256_path(dest_path):
    """The `sha256sum`-format record written beside a completed download."""
    return pathlib.Path(str(dest_path) + ".sha256")


def file_sha256(path, chunk_size=CHUNK_SIZE):
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256_record(dest_path, sha256_hex):
    """Write `<hex>  <name>` (the `sha256sum` line, name relative so `sha256sum -c` works in the folder)."""
    record = sha256_path(dest_path)
    temporary = pathlib.Path(str(record) + ".tmp")
    temporary.write_text(f"{sha256_hex}  {pathlib.Path(dest_path).name}\n", encoding="ascii")
    os.replace(temporary, record)


def _open(url, offset, timeout):
    """Send the GET, asking for bytes from `offset` on when resuming (RFC 9110 §14.2)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    # urllib keeps the Range header across the redirect GitHub answers release downloads with.
    return urllib.request.build_opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(response):
    """(first byte, total size or None) from a 206 response's `Content-Range: bytes a-b/total`."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _expected_total(response):
    """The size the complete file will have, or None when the server does not say."""
    if response.status == 206:
        return _content_range(response)[1]
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def _start_response(url, part, timeout):
    """Open the transfer, resuming from `part` when the server honours the Range request.

    Returns (response, offset): the number of bytes of `part` to keep. A server that ignores Range
    answers 200 with the whole file; then the part is discarded and the download starts from zero.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The part is not a prefix of what the server now has (e.g. already too long): start over.
            return _restart(url, part, timeout, f"server refused to resume at byte {offset}")
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        kept = f" ({offset} bytes kept in {part})" if offset else ""
        raise DownloadError(f"download of {url} could not connect: {reason}{kept}; "
                            "check the network and re-run the same command") from None
    if response.status == 206:
        first_byte = _content_range(response)[0]
        if first_byte == offset:
            return response, offset
        response.close()
        if offset:
            return _restart(url, part, timeout, f"server answered byte {first_byte} when asked for {offset}")
        raise DownloadError(f"download of {url} failed: server sent a partial answer from byte "
                            f"{first_byte} to a request for the whole file")
    if offset:
        print(f"{part.name}: server ignored the resume request; restarting from zero", file=sys.stderr)
    return response, 0


def _restart(url, part, timeout, why):
    """Discard the part and ask for the whole file (a request without Range cannot recurse again)."""
    print(f"{part.name}: {why}; restarting from zero", file=sys.stderr)
    part.unlink()
    return _start_response(url, part, timeout)


def download(url, dest_path, chunk_size=CHUNK_SIZE, progress=True, expected_sha256=None,
             timeout=TIMEOUT_SECONDS):
    """Fetch `url` into `dest_path` through `<dest_path>.part`, resuming it; return the SHA-256 hex.

    The completed part is renamed to `dest_path` atomically (os.replace) and its hash recorded in
    `<dest_path>.sha256`. With `expected_sha256`, a file whose hash differs is deleted and an error
    raised, as resuming onto a file that changed on the server would produce such a mix.
    Raises DownloadError with a one-line message; what was received stays in the part.
    """
    dest_path = pathlib.Path(dest_path)
    part = part_path(dest_path)
    response, offset = _start_response(url, part, timeout)
    total = _expected_total(response)
    digest = hashlib.sha256()
    with response, open(part, "ab" if offset else "wb") as stream:
        if offset:
            with open(part, "rb") as existing:  # the hash covers the bytes kept from the last run
                for chunk in iter(lambda: existing.read(chunk_size), b""):
                    digest.update(chunk)
        received, broken = offset, None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest_path.name, disable=not progress, leave=True)
        try:
            # http.client ends the body with b"" (no error) when the server closes early,
            # so completeness is judged by the byte count below, not by an exception.
            for chunk in iter(lambda: response.read(chunk_size), b""):
                stream.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            broken = error
        finally:
            bar.close()
    if broken is not None or (total is not None and received != total):
        of_total = f" of {total}" if total is not None else ""
        raise DownloadError(f"download of {url} interrupted at {received} bytes{of_total}; "
                            "re-run the same command to resume")
    sha256_hex = digest.hexdigest()
    if expected_sha256 is not None and sha256_hex != expected_sha256.lower():
        part.unlink()
        raise DownloadError(f"download of {url} has SHA-256 {sha256_hex}, expected {expected_sha256}; "
                            "the partial file was deleted, re-run to download it again")
    write_sha256_record(dest_path, sha256_hex)
    os.replace(part, dest_path)
    return sha256_hex


def file_name_from_url(url):
    """The last path segment of `url`, unquoted (e.g. `R152.npz`)."""
    name = pathlib.PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise DownloadError(f"cannot tell a file name from {url}; give a URL that ends in the file name")
    return name


def zoo_sources(model_names=None):
    """[(url, file name, expected SHA-256 or None)] for zoo models; all of the zoo when names is None.

    The zoo is the only table of URLs (repro/zoo.py); it is imported here, not at the top, so
    `--url` works without it.
    """
    try:
        from repro import zoo
    except ImportError as error:
        raise DownloadError(f"the model zoo (repro/zoo.py) could not be imported ({error}); "
                            "use --url to download a file directly") from None
    names = list(model_names) if model_names else zoo.model_names()
    sources = []
    for name in names:
        try:
            spec = zoo.get_model(name)
        except ValueError as error:
            raise DownloadError(str(error)) from None
        if not spec.url:
            raise DownloadError(f"model {name} has no release URL in the zoo; "
                                "train or copy its checkpoint instead")
        sources.append((spec.url, spec.checkpoint, getattr(spec, "sha256", None)))
    return sources


def fetch_into(url, directory, file_name=None, expected_sha256=None, progress=True):
    """Download `url` into `directory` unless the file is already there; print and return its SHA-256.

    A file already there is verified, not trusted: against `expected_sha256` when the zoo knows it, else
    against the `.sha256` record this script wrote when it downloaded the file (a file changed or
    truncated since is refused). A file with neither is reported as present but not verified.
    """
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DownloadError(f"--dir {directory} is a file, not a folder: choose another --dir")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create --dir {directory}: {error.strerror or error}") from None
    dest_path = directory / (file_name or file_name_from_url(url))
    if dest_path.exists():
        sha256_hex = file_sha256(dest_path)
        record = sha256_path(dest_path)
        recorded = record.read_text(encoding="ascii").split()[0] if record.exists() else None
        if expected_sha256 is not None and sha256_hex != expected_sha256.lower():
            raise DownloadError(f"{dest_path} exists but its SHA-256 is {sha256_hex}, expected "
                                f"{expected_sha256}; delete it and re-run")
        if recorded is not None and sha256_hex != recorded:
            raise DownloadError(f"{dest_path} exists but its SHA-256 {sha256_hex[:12]}… differs from the "
                                f"{recorded[:12]}… recorded when it was downloaded (changed or damaged since); "
                                "delete it and re-run")
        if expected_sha256 is not None or recorded is not None:
            print(f"{dest_path} already exists and its SHA-256 matches; skipped (sha256 {sha256_hex})")
        else:
            print(f"{dest_path} already exists; skipped, NOT verified: no published or recorded SHA-256 to check "
                  f"it against (sha256 {sha256_hex}; delete it to download it again)")
        return sha256_hex
    sha256_hex = download(url, dest_path, progress=progress, expected_sha256=expected_sha256)
    print(f"{sha256_hex}  {dest_path}")
    return sha256_hex


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", nargs="+", metavar="NAME",
                        help="zoo model names (default: every model of the zoo: "
                             "ResNet ResNetDenoise ResNeXtDenoiseAll)")
    source.add_argument("--url", help="download this URL instead of a zoo model")
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="destination folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    """Command-line entry point; returns the process exit code (0 on success, 1 on any failure)."""
    args = parse_args(argv)
    try:
        sources = [(args.url, None, None)] if args.url else zoo_sources(args.model)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failures = 0
    for url, file_name, expected_sha256 in sources:  # one failed model does not stop the others
        try:
            fetch_into(url, args.dir, file_name, expected_sha256, progress=not args.no_progress)
        except DownloadError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
        except OSError as error:  # the folder or file cannot be written (permissions, a full disk)
            where = f" ({error.filename})" if error.filename else ""
            print(f"error: cannot write the download{where}: {error.strerror or error}; re-run the same command "
                  "once that is fixed (a partial download resumes)", file=sys.stderr)
            failures += 1
        except KeyboardInterrupt:
            print("error: interrupted; re-run the same command to resume", file=sys.stderr)
            return 130
    return 1 if failures else 0


def console_main():
    """``repro-download``."""
    sys.exit(main())
