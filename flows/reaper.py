"""The guard that kills ``ragops up``'s children when the supervisor dies, however it dies (kill -9, OOM killer).

Why a separate process: a killed supervisor runs no cleanup, and Linux's parent-death signal (``PR_SET_PDEATHSIG``)
reaches only the direct child, not the servers it spawns (uvicorn, MLflow's and Prefect's own subprocesses), and
setting it needs a ``preexec_fn``, which is unsafe in a process with threads (the supervisor pumps logs on threads).
The reaper is started first, in its own session, with a pipe from the supervisor on its stdin; the supervisor
writes the process-group id of every child it starts. The kernel closes the pipe when the supervisor exits for any
reason: at end of input the reaper terminates every group (SIGTERM, then SIGKILL after a short grace) and exits.
Every child is a process-group leader and its descendants stay in its group, so grandchildren die too.

Standard library only: it must start fast and import nothing of the platform.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

GRACE_S = 2.0


def group_alive(pgid: int) -> bool:
    """True while some process is still in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_groups(pgids: Iterable[int], signum: int) -> None:
    """Send ``signum`` to every group that still exists."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def terminate_groups(
    pgids: Iterable[int], grace_s: float = GRACE_S, reap: Callable[[], object] | None = None
) -> list[int]:
    """SIGTERM all groups at once, SIGKILL whatever is left after ``grace_s``; returns the groups that needed it.

    ``reap`` is for the groups' parent: a leader that has exited stays in its group as a zombie until its parent
    waits for it, so without reaping every group looks alive and every stop would sit out the whole grace.
    """
    pending = [pgid for pgid in pgids if group_alive(pgid)]
    signal_groups(pending, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        if reap is not None:
            reap()
        pending = [pgid for pgid in pending if group_alive(pgid)]
    signal_groups(pending, signal.SIGKILL)
    return pending


def main() -> None:
    """Read group ids until end of input, then terminate those groups."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's to handle
    pgids: list[int] = []
    for line in sys.stdin:
        with contextlib.suppress(ValueError):
            pgids.append(int(line))
    terminate_groups(pgids)


if __name__ == "__main__":
    main()
