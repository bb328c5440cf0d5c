"""download_dataset against a local HTTP server: resume, retry, checksum, unsafe archives, lock, offline."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import random
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anomaly_ae.data import download as dl
from anomaly_ae.data.download import DownloadError, download_dataset

# Random bytes do not compress, so the archive is large enough (~70 KB) that "half way" is well defined.
_rng = random.Random(0)
FILES = {
    "bottle/train/good/000.png": _rng.randbytes(30_000),
    "bottle/test/broken_large/000.png": _rng.randbytes(20_000),
    "grid/train/good/000.png": _rng.randbytes(20_000),
    "license.txt": b"CC BY-NC-SA 4.0\n",
}
NAME = "mvtec"


def sha(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:xz") -> bytes:
    """A tar archive in memory from (TarInfo, content) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in entries:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    """A zip archive in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_tar() -> bytes:
    """The fake MVTec archive: two categories and a licence, as tar.xz."""
    return make_tar([(tarfile.TarInfo(name), data) for name, data in FILES.items()])


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A TarInfo of the given type."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, linkname
    return ti


class ArchiveServer:
    """Serves one payload on 127.0.0.1 with Range support; `mode` injects failures; `log` records requests."""

    def __init__(self, payload: bytes, mode: str = "") -> None:
        self.payload, self.mode, self.log = payload, mode, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.respond(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"

    def respond(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Answer one GET according to mode, logging Range, status and body bytes sent."""
        entry = {"range": h.headers.get("Range"), "status": 0, "sent": 0}
        first = not self.log
        self.log.append(entry)
        if ("503" in self.mode and first) or "always503" in self.mode or "404" in self.mode:
            entry["status"] = 404 if "404" in self.mode else 503
            h.send_error(entry["status"])
            return
        size, start = len(self.payload), 0
        if entry["range"] and "ignore_range" not in self.mode:
            start = int(entry["range"].removeprefix("bytes=").rstrip("-"))
            if start >= size:
                entry["status"] = 416
                h.send_error(416)
                return
            entry["status"] = 206
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            entry["status"] = 200
            h.send_response(200)
        body = self.payload[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if "drop" in self.mode and first:
            body = body[: len(body) // 2]  # headers promised the whole file; the peer sees a short read
        for i in range(0, len(body), 8192):
            h.wfile.write(body[i : i + 8192])
            entry["sent"] += len(body[i : i + 8192])
            if "slow" in self.mode:
                time.sleep(0.02)  # keeps the first downloader busy while the second one arrives
        if "drop" in self.mode and first:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def serve() -> Iterator[Callable[..., ArchiveServer]]:
    """Start ArchiveServers in background threads; stop them after the test."""
    servers: list[ArchiveServer] = []

    def start(payload: bytes, mode: str = "") -> ArchiveServer:
        server = ArchiveServer(payload, mode)
        threading.Thread(
            target=server.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 10 ms instead of seconds."""
    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)


def leftovers(root: Path) -> list[str]:
    """Names in root apart from the lock file (filelock may or may not remove it)."""
    return sorted(p.name for p in root.iterdir() if p.name != f".{NAME}.lock")


def assert_extracted(target: Path, digest: str) -> None:
    """All FILES are in target with their bytes, and the marker holds the digest."""
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data
    assert (target / dl.MARKER).read_text() == digest + "\n"


@pytest.mark.parametrize(
    ("archive", "keep"), [("mvtec_anomaly_detection.tar.xz", False), ("mvtec.zip", True)]
)
def test_download_extracts_verifies_and_is_idempotent(
    serve, tmp_path: Path, archive: str, keep: bool
) -> None:
    payload = good_tar() if archive.endswith(".tar.xz") else make_zip(FILES)
    server = serve(payload)
    root = tmp_path / "data"
    url = f"{server.base}/{archive}"
    out = download_dataset(url, sha(payload), root, NAME, keep_archive=keep)
    assert out == root / NAME
    assert_extracted(out, sha(payload))
    assert leftovers(root) == (sorted([archive, NAME]) if keep else [NAME])
    assert [e["status"] for e in server.log] == [200]
    # Complete: the second call returns at once without touching the network.
    server.httpd.shutdown()
    assert download_dataset(url, sha(payload), root, NAME, retries=0) == out
    assert len(server.log) == 1


def test_resumes_with_range_after_connection_drop(serve, tmp_path: Path) -> None:
    payload = good_tar()
    server = serve(payload, "drop")
    download_dataset(f"{server.base}/mvtec.tar.xz", sha(payload), tmp_path, NAME, progress=False)
    half = len(payload) // 2
    assert server.log == [
        {"range": None, "status": 200, "sent": half},
        {"range": f"bytes={half}-", "status": 206, "sent": len(payload) - half},
    ]
    assert_extracted(tmp_path / NAME, sha(payload))
    assert leftovers(tmp_path) == [NAME]


@pytest.mark.parametrize(
    ("part", "statuses"),
    [("head", [206]), ("whole", [416]), ("garbage", [416, 200])],
)
def test_leftover_part_file_is_resumed_or_replaced(
    serve, tmp_path: Path, part: str, statuses: list[int]
) -> None:
    payload = good_tar()
    leftover = {"head": payload[:1000], "whole": payload, "garbage": bytes(len(payload))}[part]
    (tmp_path / "mvtec.tar.xz.part").write_bytes(leftover)  # as a killed earlier run leaves it
    server = serve(payload)
    download_dataset(f"{server.base}/mvtec.tar.xz", sha(payload), tmp_path, NAME, progress=False)
    assert [e["status"] for e in server.log] == statuses
    assert server.log[0]["range"] == f"bytes={len(leftover)}-"
    assert_extracted(tmp_path / NAME, sha(payload))
    assert leftovers(tmp_path) == [NAME]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path: Path) -> None:
    payload = good_tar()
    server = serve(payload, "drop,ignore_range")
    download_dataset(f"{server.base}/mvtec.tar.xz", sha(payload), tmp_path, NAME, progress=False)
    half = len(payload) // 2
    assert server.log[1] == {"range": f"bytes={half}-", "status": 200, "sent": len(payload)}
    assert_extracted(tmp_path / NAME, sha(payload))


def test_503_is_retried(serve, tmp_path: Path) -> None:
    payload = good_tar()
    server = serve(payload, "503")
    download_dataset(f"{server.base}/mvtec.tar.xz", sha(payload), tmp_path, NAME, progress=False)
    assert [e["status"] for e in server.log] == [503, 200]
    assert_extracted(tmp_path / NAME, sha(payload))


def test_retries_are_bounded(serve, tmp_path: Path) -> None:
    server = serve(b"", "always503")
    url = f"{server.base}/mvtec.tar.xz"
    with pytest.raises(DownloadError) as err:
        download_dataset(url, "0" * 64, tmp_path, NAME, retries=2, progress=False)
    assert len(server.log) == 3
    assert str(err.value).startswith(
        f"Download of {url} failed after 3 attempts (HTTP 503 Service Unavailable)"
    )


def test_404_is_final_and_says_what_to_do(serve, tmp_path: Path) -> None:
    server = serve(b"", "404")
    url = f"{server.base}/mvtec.tar.xz"
    with pytest.raises(DownloadError) as err:
        download_dataset(url, "0" * 64, tmp_path, NAME, progress=False)
    assert len(server.log) == 1
    assert str(err.value) == (
        f"{url} answered HTTP 404 Not Found. Download {url} by hand into {tmp_path} (as mvtec.tar.xz) and "
        f"run again: it is checked against sha256 {'0' * 64} and extracted there. Without the dataset, "
        "data=elpv runs the offline demo."
    )


def test_tampered_archive_is_deleted_and_reported(serve, tmp_path: Path) -> None:
    payload = good_tar()
    tampered = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    server = serve(tampered)
    url = f"{server.base}/mvtec.tar.xz"
    with pytest.raises(DownloadError) as err:
        download_dataset(url, sha(payload), tmp_path, NAME, progress=False)
    assert str(err.value) == (
        f"Checksum mismatch for {tmp_path / 'mvtec.tar.xz'} from {url}: expected sha256 {sha(payload)}, "
        f"got {sha(tampered)}. The file was deleted; run again to re-download. If it fails again, the URL "
        "serves a different file: check the dataset's download page for the current URL and digest."
    )
    assert leftovers(tmp_path) == []  # no .part, no archive, no dataset dir


def malicious_archives(outside: Path) -> list[tuple[bytes, str, str]]:
    """(archive bytes, offending member, reason) for each attack; `outside` lies beside root."""
    d = tarfile.DIRTYPE
    return [
        (make_tar([(info("../../evil.txt"), b"x")]), "../../evil.txt", "'..' component"),
        (
            make_tar([(info(str(outside / "abs.txt")), b"x")]),
            str(outside / "abs.txt"),
            "absolute path or drive",
        ),
        (
            make_tar([(info("link", tarfile.SYMTYPE, "../../outside"), None), (info("link/evil.txt"), b"x")]),
            "link",
            "symlink to '../../outside' leaves the extraction dir",
        ),
        (
            make_tar([(info("link", tarfile.SYMTYPE, str(outside)), None)]),
            "link",
            f"symlink to {str(outside)!r} leaves the extraction dir",
        ),
        (
            make_tar([(info("hl", tarfile.LNKTYPE, "../../outside/secret"), None)]),
            "hl",
            "hardlink to '../../outside/secret' leaves the extraction dir",
        ),
        (make_tar([(info("dev", tarfile.CHRTYPE), None)]), "dev", "device file or fifo"),
        (make_tar([(info("fifo", tarfile.FIFOTYPE), None)]), "fifo", "device file or fifo"),
        # Each link alone stays inside; together s2 -> a/x/.. -> (a/x -> ..)/.. leaves the dir.
        (
            make_tar(
                [
                    (info("a", d), None),
                    (info("s2", tarfile.SYMTYPE, "a/x/.."), None),
                    (info("a/x", tarfile.SYMTYPE, ".."), None),
                ]
            ),
            "s2",
            "symlink resolves outside the extraction dir",
        ),
        (make_zip({"ok.txt": b"x", "../evil.txt": b"x"}), "../evil.txt", "'..' component"),
        (make_zip({"/abs.txt": b"x"}), "/abs.txt", "absolute path or drive"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_malicious_archive_is_rejected_naming_the_member(serve, tmp_path: Path, case: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    payload, member, why = malicious_archives(outside)[case]
    root = tmp_path / "data" / "root"
    root.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    server = serve(payload)
    with pytest.raises(DownloadError) as err:
        download_dataset(f"{server.base}/evil.tar", sha(payload), root, NAME, progress=False)
    assert str(err.value) == (
        f"Unsafe member {member!r} in {root / 'evil.tar'}: {why}. Nothing was kept; the archive is "
        "corrupt or malicious, so fetch it again from the dataset's official page."
    )
    assert leftovers(root) == []  # no dataset dir, no temp dir, no archive
    assert sorted(p for p in tmp_path.rglob("*") if p.name != f".{NAME}.lock") == before
    assert (outside / "secret").read_text() == "secret"


def test_concurrent_callers_download_once(serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=dl.__name__)
    payload = good_tar()
    server = serve(payload, "slow")
    url = f"{server.base}/mvtec.tar.xz"
    barrier, results = threading.Barrier(2), []

    def worker() -> None:
        barrier.wait()  # both pass the marker check before either finishes
        try:
            results.append(download_dataset(url, sha(payload), tmp_path, NAME, progress=False))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == [tmp_path / NAME] * 2
    assert server.log == [{"range": None, "status": 200, "sent": len(payload)}]
    assert "Another process is preparing" in caplog.text
    assert_extracted(tmp_path / NAME, sha(payload))


def test_offline_error_names_root_url_checksum_and_demo(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz"
    digest = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_dataset(url, digest, tmp_path, NAME, progress=False)
    assert time.monotonic() - start < 5  # refused connections are not retried
    message = str(err.value)
    assert message.startswith(f"Cannot reach {url} (")
    assert message.endswith(
        f"Download {url} by hand into {tmp_path} (as mvtec_anomaly_detection.tar.xz) and run again: it is "
        f"checked against sha256 {digest} and extracted there. Without the dataset, data=elpv runs the "
        "offline demo."
    )
    assert leftovers(tmp_path) == []


def test_existing_unmarked_dir_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="exists but is not a complete download"):
        download_dataset("http://127.0.0.1:9/x.tar.xz", "0" * 64, tmp_path, NAME, progress=False)
    assert (tmp_path / NAME / "mine.txt").read_text() == "keep"


def test_hand_placed_archive_is_used_without_network(tmp_path: Path) -> None:
    payload = good_tar()
    (tmp_path / "mvtec_anomaly_detection.tar.xz").write_bytes(payload)
    url = "http://127.0.0.1:9/mvtec_anomaly_detection.tar.xz"  # nothing listens: any request would fail
    download_dataset(url, sha(payload), tmp_path, NAME, progress=False)
    assert_extracted(tmp_path / NAME, sha(payload))
    assert leftovers(tmp_path) == [NAME]


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        download_dataset("http://127.0.0.1:9/x.tar", "cf4313b1", tmp_path, NAME)
    with pytest.raises(ValueError, match="plain directory name"):
        download_dataset("http://127.0.0.1:9/x.tar", "0" * 64, tmp_path, "../up")
