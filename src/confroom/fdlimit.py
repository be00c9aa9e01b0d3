"""The process's file-descriptor limit: raised to the hard limit at start, and EMFILE detection.

Every call holds an RTP socket and every SIP TCP or API connection a descriptor, so the soft
RLIMIT_NOFILE (often 1,024) is raised to the hard limit when the server starts; the default
connection caps (`confroom.connlimits.default_caps`) are sized from the result.
"""

from __future__ import annotations

import contextlib
import errno
import resource

# errors meaning "out of descriptors or kernel memory", not "this operation is wrong"
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# a cap on what we ask for when the hard limit is "unlimited"
_UNLIMITED_TARGET = 1 << 20


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; (soft, hard) after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _UNLIMITED_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        # not allowed everywhere (a container's seccomp profile, ...): then keep what we have
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def fd_limit() -> int:
    """The current soft descriptor limit (a large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else int(soft)


def is_resource_error(exc: BaseException) -> bool:
    """True for an OSError that means the process or system ran out of descriptors/memory."""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS
