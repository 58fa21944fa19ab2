"""Fetching source files from a URL or a local path, verified by checksum.

Every source file is named by a location (``https://...``, ``http://...``, ``file://...`` or a
plain filesystem path) and a checksum ``"<algorithm>:<hex>"`` (``md5`` or ``sha256``). The file
is streamed into ``<dest>.part`` beside its destination, hashed on the way, and moved into place
only when the checksum matches, so a failed or corrupt download leaves nothing behind and never
replaces a good file already there.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from metabench import MetabenchError

# (what, done so far, total or None): every source reports through it, downloads in bytes
ProgressCallback = Callable[[str, int, int | None], None]


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:abc..."`` into ``("md5", "abc...")`` with a clear error for bad forms."""
    algorithm, _, digest = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not digest:
        raise MetabenchError(f"checksum {checksum!r} must look like 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, digest.lower()


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_url(location: str) -> bool:
    return location.split("://", 1)[0] in ("http", "https", "file") and "://" in location


def join_location(prefix: str, name: str) -> str:
    """``name`` inside ``prefix``, a URL prefix or a local folder."""
    if is_url(prefix):
        return prefix.rstrip("/") + "/" + name
    return str(Path(prefix).expanduser() / name)


def _open(location: str, timeout: float):
    """Open ``location`` for reading; return (stream, total size or None)."""
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise MetabenchError(f"{path} does not exist; give the path of the downloaded file or a URL")
        return open(path, "rb"), path.stat().st_size
    request = urllib.request.Request(location, headers={"User-Agent": "metabench"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise MetabenchError(
            f"download of {location} failed: HTTP {error.code} {error.reason}; "
            "check the URL in params.yaml or point the source at a local copy"
        ) from error
    except (TimeoutError, urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MetabenchError(
            f"cannot reach {location} ({reason}); check your network, or point the source at a local copy"
        ) from error
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def fetch_file(
    location: str,
    dest: Path,
    checksum: str | None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    deadline: float | None = None,
) -> Path:
    """Copy ``location`` to ``dest`` and verify it; skip the copy if ``dest`` already verifies.

    ``timeout`` bounds each read; ``deadline`` (seconds, default ``METABENCH_DOWNLOAD_DEADLINE``
    or 6 hours) bounds the whole transfer, so a server that trickles bytes cannot hang a fetch.
    Raises MetabenchError (one line, with what to do) on a missing file, an HTTP error, an
    unreachable host, a transfer past its deadline or a checksum mismatch; in every case
    ``dest`` is left as it was.
    """
    if deadline is None:
        deadline = float(os.environ.get("METABENCH_DOWNLOAD_DEADLINE", 6 * 3600))
    started = time.monotonic()
    dest = Path(dest)
    algorithm, expected = parse_checksum(checksum) if checksum else ("sha256", None)
    if dest.is_file() and expected and file_digest(dest, algorithm) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.new(algorithm)
    stream, total = _open(location, min(timeout, deadline))
    try:
        with stream, open(partial, "wb") as out:
            done = _copy(
                stream,
                out,
                digest,
                location,
                (started, deadline, timeout),
                progress,
                f"download {dest.name} (bytes)",
                total,
            )
        if total is not None and done != total:
            raise MetabenchError(f"download of {location} stopped at {done} of {total} bytes; run the command again")
        if expected and digest.hexdigest() != expected:
            raise MetabenchError(
                f"{location} has {algorithm} {digest.hexdigest()}, expected {expected}: the download is corrupt or "
                "a different file; run again, or set the checksum that belongs to this source in params.yaml"
            )
        os.replace(partial, dest)
    except OSError as error:
        raise MetabenchError(
            f"cannot write {dest} ({error.strerror or error}); free disk space or choose another data dir"
        ) from error
    finally:
        if partial.exists():
            partial.unlink()
    return dest


def _socket(stream):
    """The socket under an HTTP response (None for a local file): its timeout bounds one read."""
    return getattr(getattr(getattr(stream, "fp", None), "raw", None), "_sock", None)


def _copy(
    stream, out, digest, location: str, clock: tuple[float, float, float], progress, label: str, total: int | None
) -> int:
    """Copy ``stream`` into ``out`` block by block, hashing as it goes; return the bytes copied.
    ``clock`` is (start on ``time.monotonic``, deadline seconds, per-read timeout): each read may
    wait only for what is left of the deadline, so a stalled server cannot hold a fetch past it;
    a transfer past it, or a broken one, is a one-line error."""
    started, deadline, timeout = clock
    done = 0
    read = getattr(stream, "read1", stream.read)  # read1: what has arrived, so the deadline is checked often
    sock = _socket(stream)

    def past_deadline() -> MetabenchError:
        return MetabenchError(
            f"download of {location} took longer than {deadline:g} s ({done} bytes so far); "
            "try again later or from a mirror (METABENCH_DOWNLOAD_DEADLINE sets the limit)"
        )

    while True:
        left = deadline - (time.monotonic() - started)
        if left <= 0:
            raise past_deadline()
        if sock is not None:
            sock.settimeout(min(timeout, left))
        try:
            block = read(1 << 20)
        except (TimeoutError, OSError) as error:
            if time.monotonic() - started >= deadline:
                raise past_deadline() from error
            raise MetabenchError(f"download of {location} broke off ({error}); run the command again") from error
        if not block:
            return done
        if time.monotonic() - started > deadline:
            raise past_deadline()
        out.write(block)
        digest.update(block)
        done += len(block)
        if progress:
            progress(label, done, total)


def locate(location: str, raw_dir: Path, checksum: str | None, hint: str) -> Path:
    """A local path for ``location``: downloaded and verified if a URL, verified in place if a local file.

    ``hint`` ends the error when the data is missing (where to get it / what to set).
    """
    name = location.rstrip("/").rsplit("/", 1)[-1]
    if is_url(location):
        if checksum is None:
            raise MetabenchError(
                f"no checksum configured for {name}; add it under the dataset's checksums in params.yaml"
            )
        return fetch_file(location, Path(raw_dir) / name, checksum)
    path = Path(location).expanduser()
    if not path.exists():
        raise MetabenchError(f"{path} does not exist; {hint}")
    if checksum and path.is_file():
        algorithm, expected = parse_checksum(checksum)
        if file_digest(path, algorithm) != expected:
            raise MetabenchError(f"{path} has the wrong {algorithm}; it is damaged or another file: fetch it again")
    return path
