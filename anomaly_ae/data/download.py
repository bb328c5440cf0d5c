"""Checked, resumable, lock-protected download and safe extraction of dataset archives."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import secrets
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from filelock import FileLock, Timeout
from rich import progress as rp

log = logging.getLogger(__name__)

MARKER = ".complete"
CHUNK = 1 << 20  # 1 MiB reads: few syscalls, yet the bar still moves on slow links
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # the 'data' filter's error; absent before 3.11.4
BACKOFF_S = 0.5  # doubled per retry; short because a flaky mirror usually recovers in seconds


class DownloadError(RuntimeError):
    """A dataset could not be fetched, verified or extracted; the message says how to fix it."""


class _Transient(Exception):
    """A network failure worth retrying (reset, short read, timeout, 5xx)."""


def download_dataset(
    url: str,
    sha256: str,
    root: Path,
    name: str,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download `url` into root, verify SHA-256, extract safely to root/name; return root/name. Idempotent.

    Args:
        retries: extra attempts after a transient network error (reset, short read, timeout, 5xx).
        keep_archive: keep root/<archive> after extraction instead of deleting it.
    """
    sha256 = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"name must be a plain directory name, got {name!r}")
    root = Path(root).expanduser().resolve()
    target = root / name
    if _is_complete(target, sha256):
        return target
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Another process is preparing %s; waiting for it", target)
        lock.acquire()
    try:
        # Re-check under the lock: the process we waited for has usually finished the job.
        if _is_complete(target, sha256):
            return target
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty folder made in advance (mkdir data/mvtec) holds nothing to protect
        if target.exists():
            raise DownloadError(
                f"{target} exists but is not a complete download of {url} (no {MARKER} holding sha256 "
                f"{sha256}). Delete it and run again, or, if it is a complete copy, write that digest "
                f"into {target / MARKER}."
            )
        archive = root / _archive_name(url, name)
        if not archive.is_file():
            _fetch(url, archive, sha256, retries=retries, timeout=timeout, progress=progress)
        _verify(archive, sha256, url)
        _extract(archive, target, sha256, url, keep_archive=keep_archive)
        if not keep_archive:
            archive.unlink()
    finally:
        lock.release()
    return target


def _is_complete(target: Path, sha256: str) -> bool:
    """True when target holds a marker naming this exact archive digest."""
    try:
        return (target / MARKER).read_text().strip() == sha256
    except OSError:
        return False


def _archive_name(url: str, name: str) -> str:
    """File name for the archive, taken from the URL path."""
    base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    # A URL ending in '/' or '..' gives no usable file name; never let it address anything but a file in root.
    return base if base not in ("", ".", "..") and "\\" not in base else f"{name}.archive"


def _by_hand(url: str, sha256: str, archive: Path) -> str:
    """The manual-download instructions every network error ends with."""
    return (
        f"Download {url} by hand into {archive.parent} (as {archive.name}) and run again: it is checked "
        f"against sha256 {sha256} and extracted there. Without the dataset, data=elpv runs the offline demo."
    )


def _fetch(url: str, archive: Path, sha256: str, *, retries: int, timeout: float, progress: bool) -> None:
    """Download url to archive via archive.part, resuming and retrying transient failures."""
    part = archive.with_name(archive.name + ".part")
    attempt = 0
    while True:
        try:
            _stream(url, part, timeout=timeout, progress=progress)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and part.exists():
                # The .part already covers the whole file (or more): keep it if it verifies, else restart;
                # without a .part there is no Range, so a second 416 lands in the final branch below.
                if file_sha256(part) == sha256:
                    break
                part.unlink()
                continue
            if err.code < 500:
                raise DownloadError(
                    f"{url} answered HTTP {err.code} {err.reason}. {_by_hand(url, sha256, archive)}"
                ) from err
            reason: object = f"HTTP {err.code} {err.reason}"
        except urllib.error.URLError as err:
            if not isinstance(err.reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError)):
                # DNS failure, refused connection, no route: retrying will not help, so fail fast.
                raise DownloadError(
                    f"Cannot reach {url} ({err.reason}). {_by_hand(url, sha256, archive)}"
                ) from err
            reason = err.reason
        except (_Transient, ConnectionError, TimeoutError, http.client.HTTPException) as err:
            reason = err
        except OSError as err:  # network errors are caught above, so this is the local disk
            raise DownloadError(
                f"Writing {part} failed ({err}); free disk space and run again to resume."
            ) from err
        if attempt == retries:
            raise DownloadError(
                f"Download of {url} failed after {retries + 1} attempts ({reason}); the partial file {part} "
                f"is kept and resumed next time. {_by_hand(url, sha256, archive)}"
            )
        log.warning("Download of %s interrupted (%s); retrying", url, reason)
        time.sleep(BACKOFF_S * 2**attempt)
        attempt += 1
    part.replace(archive)


def _stream(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request appending to part; raises _Transient when the body ends early."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "anomaly_ae-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if have and (
            resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        ):
            have = 0  # the server ignored Range and sends the whole file: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn())
        with (
            rp.Progress(
                *columns, rp.TransferSpeedColumn(), rp.TimeRemainingColumn(), disable=not progress
            ) as bar,
            part.open("ab" if have else "wb") as out,
        ):
            task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=have)
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.advance(task, len(chunk))
    # urllib returns a short body silently when the peer closes early, so count the bytes ourselves.
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Transient(f"connection closed after {size} of {total} bytes")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB archives need no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(archive: Path, sha256: str, url: str) -> None:
    """Delete archive and raise DownloadError unless its digest is sha256."""
    actual = file_sha256(archive)
    if actual != sha256:
        archive.unlink()
        raise DownloadError(
            f"Checksum mismatch for {archive} from {url}: expected sha256 {sha256}, got {actual}. "
            "The file was deleted; run again to re-download. If it fails again, the URL serves a "
            "different file: check the dataset's download page for the current URL and digest."
        )


def _extract(archive: Path, target: Path, sha256: str, url: str, *, keep_archive: bool) -> None:
    """Extract into a temporary sibling, write the marker, then rename onto target in one step."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; we hold the lock, so nobody uses it
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        else:
            raise DownloadError(f"{archive} is neither a tar nor a zip archive; check the URL {url}.")
        _check_symlinks(archive, tmp)
        (tmp / MARKER).write_text(sha256 + "\n")
        tmp.rename(target)  # atomic on one filesystem: target appears only when complete
    except DownloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not keep_archive:
            archive.unlink(missing_ok=True)  # verified yet unsafe: nothing worth keeping
        raise
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(
            f"Extracting {archive} into {target} failed ({err}). Free disk space or fix permissions and "
            "run again; the verified archive is reused."
        ) from err


def _unsafe(archive: Path, member: str, why: str) -> DownloadError:
    """The error for an archive member that would escape or is not a plain file/dir/link."""
    return DownloadError(
        f"Unsafe member {member!r} in {archive}: {why}. Nothing was kept; the archive is corrupt or "
        "malicious, so fetch it again from the dataset's official page."
    )


def _inside(base: str, path: str) -> bool:
    """True when path, with symlinks already on disk resolved, stays within base."""
    real = os.path.realpath(path)
    return real == base or real.startswith(base + os.sep)


def _check_name(archive: Path, name: str, base: str) -> None:
    """Reject absolute names, drive letters, '..' components and names that resolve outside base."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "absolute path or drive")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise _unsafe(archive, name, "'..' component")
    if not _inside(base, os.path.join(base, name)):
        raise _unsafe(archive, name, "path leads outside the extraction dir through a symlink")


def _extract_tar(archive: Path, dest: Path) -> None:
    """Extract member by member, checking each against what is already on disk."""
    base = os.path.realpath(dest)
    # The stdlib 'data' filter (3.11.4+) repeats these checks as a second line of defence.
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streaming: one decompression pass even for multi-GB .tar.xz
            _check_name(archive, member.name, base)
            if member.isdev() or member.isfifo():
                raise _unsafe(archive, member.name, "device file or fifo")
            if member.issym():
                where = os.path.join(base, os.path.dirname(member.name), member.linkname)
                if os.path.isabs(member.linkname) or not _inside(base, where):
                    raise _unsafe(
                        archive, member.name, f"symlink to {member.linkname!r} leaves the extraction dir"
                    )
            elif member.islnk():
                if os.path.isabs(member.linkname) or not _inside(base, os.path.join(base, member.linkname)):
                    raise _unsafe(
                        archive, member.name, f"hardlink to {member.linkname!r} leaves the extraction dir"
                    )
            elif not (member.isfile() or member.isdir()):
                raise _unsafe(archive, member.name, "unsupported member type")
            try:
                # Directory modes are not applied: a read-only dir would block its own members (3.10).
                tar.extract(member, dest, set_attrs=not member.isdir(), **extra)
            except _FILTER_ERROR as err:
                raise _unsafe(archive, member.name, str(err)) from err


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract a zip after checking every name; zipfile writes symlink entries as plain files."""
    base = os.path.realpath(dest)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_name(archive, info.filename, base)
        zf.extractall(dest)


def _check_symlinks(archive: Path, dest: Path) -> None:
    """Re-check every extracted symlink: a later link can redirect an earlier one outside."""
    base = os.path.realpath(dest)
    for path in dest.rglob("*"):
        if path.is_symlink() and not _inside(base, str(path)):
            raise _unsafe(archive, str(path.relative_to(dest)), "symlink resolves outside the extraction dir")
