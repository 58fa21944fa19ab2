"""Writing result files so that none is ever half-written, and hashing what is written.

Every file a run produces goes through ``write_atomic``: the bytes go to a temporary sibling,
are flushed to disk (fsync), and the sibling is renamed over the target (atomic on POSIX), so
a kill or a full disk leaves either the old file or the new one, never a mixture. A failed
write is a one-line error naming the file and the reason; the old file is untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from metabench import MetabenchError


def reason(error: OSError) -> str:
    """A readable reason for an OS error (``strerror`` is None for some, e.g. from zipfile)."""
    return error.strerror or str(error) or type(error).__name__


def write_atomic(path: Path, data: bytes | str) -> None:
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600 files; results keep the usual mode
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        temporary = None
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except OSError as error:
        raise MetabenchError(
            f"cannot write {path} ({reason(error)}); free disk space or choose another directory (the old file is unchanged)"
        ) from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def write_together(contents: dict[Path, bytes | str]) -> None:
    """Replace several files that describe one thing (an evaluation): every new file is written
    and flushed beside its target first, and only then are they renamed into place, so a full
    disk or a failed write leaves every old file as it was. (A kill between the renames leaves
    files that disagree, which the run's manifest refuses: ``RunFolder.read_verified``.)"""
    written: dict[Path, str] = {}
    try:
        for path, data in contents.items():
            path = Path(path)
            payload = data.encode() if isinstance(data, str) else data
            handle, written[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            os.fchmod(handle, 0o666 & ~_umask())
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
    except OSError as error:
        for temporary in written.values():
            Path(temporary).unlink(missing_ok=True)
        names = ", ".join(Path(p).name for p in contents)
        raise MetabenchError(
            f"cannot write {names} in {Path(next(iter(contents))).parent} ({reason(error)}); free disk space "
            f"(the old files are unchanged)"
        ) from error
    for path, temporary in written.items():
        os.replace(temporary, path)
    directory = os.open(Path(next(iter(contents))).parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1) + "\n")


def read_json(path: Path, what: str, rebuild: str) -> Any:
    """A JSON file, or a one-line error naming it and ``rebuild`` (the command that remakes it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MetabenchError(f"{what} {path} does not exist; {rebuild}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetabenchError(f"{what} {path} is damaged ({type(error).__name__}); {rebuild}") from error


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_parts(folder: Path) -> None:
    """Delete temporary ``.*.part`` files a killed writer left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(".*.part"):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(folder: Path, what: str, lock_name: str = ".lock"):
    """Hold ``folder``'s lock for the block, or fail at once naming the process that holds it.

    ``flock`` is released by the kernel when its holder dies, even by SIGKILL, so a killed
    run never leaves a stale lock behind.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / lock_name, "a+")
    except OSError as error:
        raise MetabenchError(
            f"cannot use {folder} ({reason(error)}); give a directory with free space that you can write "
            "(--runs-dir, --data-dir)"
        ) from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MetabenchError(f"{what} is in use by process {holder}; wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
