"""Seccomp filter of a contract worker (defence in depth behind the static checks).

Installed after start-up, once every import is done: only the system calls a running
CPython needs to compute and to talk over its already-open pipe are allowed.  Everything
else -- open/openat, socket/connect, execve, fork/clone, kill, ptrace, unlink, mkdir,
chmod, ... -- fails with EPERM.  ``prlimit64`` is allowed for RLIMIT_CPU only (the worker
sets the CPU budget of each invocation).  libseccomp sets NO_NEW_PRIVS.
"""

from __future__ import annotations

import errno
import resource

import pyseccomp

ALLOWED_SYSCALLS = (
    "read",
    "write",
    "close",
    "fstat",
    "mmap",
    "munmap",
    "mremap",
    "brk",
    "madvise",
    "futex",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "getpid",
    "gettid",
    "getrusage",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "sched_yield",
    "restart_syscall",
    "exit",
    "exit_group",
)


def install() -> None:
    """Load the filter into this process (irreversible)."""
    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))
    for name in ALLOWED_SYSCALLS:
        f.add_rule(pyseccomp.ALLOW, name)
    # getrlimit/setrlimit of RLIMIT_CPU on this process only
    f.add_rule(
        pyseccomp.ALLOW,
        "prlimit64",
        pyseccomp.Arg(0, pyseccomp.EQ, 0),
        pyseccomp.Arg(1, pyseccomp.EQ, resource.RLIMIT_CPU),
    )
    f.load()
