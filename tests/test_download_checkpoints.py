"""scripts/download_checkpoints.py against a local HTTP server on 127.0.0.1 (never any other address).

The server serves one random file at /file.npz, answers Range requests with 206 (or ignores them
when told to), can drop the connection after K bytes on its first answer, and records the Range
header of every request. Hashes are checked against hashlib and, where present, `sha256sum -c`.
"""
import hashlib
import http.server
import pathlib
import random
import re
import shutil
import subprocess
import sys
import threading

import pytest

from repro import download as dl

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "download_checkpoints.py"
CONTENT = random.Random(0).randbytes(200_003)   # not a multiple of the chunk size
CUT_AFTER = 70_001
CHUNK = 4096




class ServerState:
    """What the server does and what it saw."""

    def __init__(self):
        self.honour_range = True
        self.cut_first_answer_after = None
        self.range_headers = []
        self.file_answers = 0


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5  # a stuck client cannot hold the server thread

        def do_GET(self):
            state.range_headers.append(self.headers.get("Range"))
            if self.path == "/redirect.npz":  # as GitHub sends release downloads elsewhere
                self.send_response(302)
                self.send_header("Location", "/file.npz")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/file.npz":
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(CONTENT):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(CONTENT)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}")
            else:
                self.send_response(200)
            body = CONTENT[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            state.file_answers += 1
            if state.cut_first_answer_after is not None and state.file_answers == 1:
                body = body[:state.cut_first_answer_after]  # HTTP/1.0: the connection closes after this
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def server(monkeypatch):
    """(base URL, state) of a server on 127.0.0.1 that is shut down when the test ends."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def run_main(url, directory, capsys):
    code = dl.main(["--url", url, "--dir", str(directory), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_full_download_has_the_right_bytes_and_sha256(server, tmp_path, capsys):
    base, state = server
    expected = hashlib.sha256(CONTENT).hexdigest()
    assert dl.download(f"{base}/file.npz", tmp_path / "direct.npz", chunk_size=CHUNK, progress=True) == expected
    assert (tmp_path / "direct.npz").read_bytes() == CONTENT
    assert "direct.npz: 100%" in capsys.readouterr().err   # the tqdm bar reached the announced size

    code, out, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0, err
    assert (tmp_path / "file.npz").read_bytes() == CONTENT
    assert not (tmp_path / "file.npz.part").exists()
    assert (tmp_path / "file.npz.sha256").read_text() == f"{expected}  file.npz\n"
    assert expected in out
    assert state.range_headers == [None, None]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_recorded_sha256_passes_sha256sum_check(server, tmp_path, capsys):
    base, _ = server
    assert run_main(f"{base}/file.npz", tmp_path, capsys)[0] == 0
    check = subprocess.run(["sha256sum", "-c", "file.npz.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and "file.npz: OK" in check.stdout


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path, capsys):
    base, state = server
    state.cut_first_answer_after = CUT_AFTER
    code, _, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 1
    assert f"interrupted at {CUT_AFTER} bytes" in err and "re-run the same command to resume" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "file.npz.part").read_bytes() == CONTENT[:CUT_AFTER]
    assert not (tmp_path / "file.npz").exists()

    code, out, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0, err
    assert state.range_headers == [None, f"bytes={CUT_AFTER}-"]
    assert (tmp_path / "file.npz").read_bytes() == CONTENT
    # The hash spans the bytes kept from the first run and those of the second.
    assert hashlib.sha256(CONTENT).hexdigest() in out
    assert not (tmp_path / "file.npz.part").exists()


def test_resume_survives_a_redirect(server, tmp_path, capsys):
    base, state = server
    state.cut_first_answer_after = CUT_AFTER
    assert dl.main(["--url", f"{base}/redirect.npz", "--dir", str(tmp_path), "--no-progress"]) == 1
    assert dl.main(["--url", f"{base}/redirect.npz", "--dir", str(tmp_path), "--no-progress"]) == 0
    # The Range header is sent again to the redirect target.
    assert state.range_headers == [None, None, f"bytes={CUT_AFTER}-", f"bytes={CUT_AFTER}-"]
    assert (tmp_path / "redirect.npz").read_bytes() == CONTENT


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, capsys):
    base, state = server
    state.honour_range = False
    state.cut_first_answer_after = CUT_AFTER
    assert run_main(f"{base}/file.npz", tmp_path, capsys)[0] == 1

    code, out, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0, err
    assert state.range_headers == [None, f"bytes={CUT_AFTER}-"]   # asked, got 200 with everything
    assert "ignored the resume request" in err
    assert (tmp_path / "file.npz").read_bytes() == CONTENT         # no duplicated prefix
    assert (tmp_path / "file.npz.sha256").read_text().split()[0] == hashlib.sha256(CONTENT).hexdigest()


def test_part_longer_than_the_file_restarts_from_zero(server, tmp_path, capsys):
    """A 416 (range not satisfiable) means the part is not a prefix of this file."""
    base, state = server
    (tmp_path / "file.npz.part").write_bytes(CONTENT + b"junk")
    code, _, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0, err
    assert state.range_headers == [f"bytes={len(CONTENT) + 4}-", None]
    assert (tmp_path / "file.npz").read_bytes() == CONTENT


def test_existing_file_without_a_checksum_is_skipped_and_said_to_be_unverified(server, tmp_path, capsys):
    base, state = server
    (tmp_path / "file.npz").write_bytes(b"already here")
    code, out, _ = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0
    assert state.range_headers == []
    assert "already exists; skipped, NOT verified" in out
    assert (tmp_path / "file.npz").read_bytes() == b"already here"
    assert hashlib.sha256(b"already here").hexdigest() in out


def test_existing_file_is_checked_against_its_download_record(server, tmp_path, capsys):
    """A completed download is re-hashed on the next run: intact → skipped, changed since → refused."""
    base, state = server
    assert run_main(f"{base}/file.npz", tmp_path, capsys)[0] == 0
    code, out, _ = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 0 and "already exists and its SHA-256 matches" in out
    with open(tmp_path / "file.npz", "r+b") as stream:            # truncated after the download
        stream.truncate(len(CONTENT) // 2)
    code, _, err = run_main(f"{base}/file.npz", tmp_path, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "differs from the" in err and "recorded when it was downloaded" in err and "delete it" in err


def test_existing_file_is_checked_against_a_known_checksum(tmp_path):
    (tmp_path / "file.npz").write_bytes(b"not the release")
    with pytest.raises(dl.DownloadError, match="expected 0000"):
        dl.fetch_into("http://127.0.0.1:9/file.npz", tmp_path, expected_sha256="0" * 64, progress=False)


def test_a_bad_dir_is_one_clear_line(tmp_path, capsys):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    code, _, err = run_main("http://127.0.0.1:9/file.npz", a_file, capsys)
    assert code == 1 and err.strip() == f"error: --dir {a_file} is a file, not a folder: choose another --dir"
    code, _, err = run_main("http://127.0.0.1:9/file.npz", a_file / "sub", capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "[Errno" not in err
    assert f"cannot create --dir {a_file / 'sub'}" in err


def test_wrong_expected_sha256_leaves_no_file(server, tmp_path):
    base, _ = server
    with pytest.raises(dl.DownloadError, match="expected 0000"):
        dl.download(f"{base}/file.npz", tmp_path / "file.npz", progress=False, expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_fails_with_one_line_and_nonzero_exit(server, tmp_path):
    """Run as the command line does, from the repo root, to check the real exit status."""
    base, _ = server
    result = subprocess.run(
        [sys.executable, "scripts/download_checkpoints.py", "--url", f"{base}/missing.npz",
         "--dir", str(tmp_path), "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: download of {base}/missing.npz failed: HTTP 404 Not Found"]
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_is_a_clear_error(tmp_path, capsys):
    """Port 9 (discard) on 127.0.0.1 is closed on test machines; nothing leaves the host."""
    code, _, err = run_main("http://127.0.0.1:9/file.npz", tmp_path, capsys)
    assert code == 1
    assert "could not connect" in err and "re-run the same command" in err
    assert list(tmp_path.iterdir()) == []


def test_zoo_names_map_to_the_release_urls():
    releases = "https://github.com/facebookresearch/ImageNet-Adversarial-Training/releases/download"
    sources = dl.zoo_sources(["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
    assert [(url, name) for url, name, _ in sources] == [
        (f"{releases}/v0/R152.npz", "R152.npz"),
        (f"{releases}/v0.1/R152-Denoise.npz", "R152-Denoise.npz"),
        (f"{releases}/v0.2/X101-DenoiseAll.npz", "X101-DenoiseAll.npz"),
    ]
    assert [name for _, name, _ in dl.zoo_sources()] == ["R152.npz", "R152-Denoise.npz", "X101-DenoiseAll.npz"]


def test_unknown_model_name_is_a_clear_error(tmp_path, capsys):
    code = dl.main(["--model", "ResNet999", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "ResNet999" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
