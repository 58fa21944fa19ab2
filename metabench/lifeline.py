"""Child processes that never outlive the process that started them.

A grid's worker processes and a launcher's ranks train for minutes. When the driver is stopped
(Ctrl-C, SIGTERM) it terminates them itself; when it is killed with SIGKILL it cannot, so each
child asks the kernel for a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``): SIGTERM
arrives the moment the parent dies, and the child's run resumes later from its saved state.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int | None = None) -> bool:
    """Have this process receive SIGTERM when its parent exits; False where the OS cannot.

    ``parent`` is the pid the caller expects as its parent: if it is already gone (the parent
    died before this call), the process terminates now instead of never.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs; ``exit_code`` is the shell's."""

    exit_code = 128 + signal.SIGTERM


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``Stopped`` in this (main) thread, so a driver cleans up its children."""
    signal.signal(signal.SIGTERM, _raise_stopped)
