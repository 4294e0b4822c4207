"""The weaker fallback where bubblewrap is missing (`--qb-sandbox guard`): an audit hook (PEP 578) in the worker.

It refuses, with PermissionError, writing or changing files outside the work directory, sockets, new processes,
signals to other processes and ctypes. Audit hooks are not a security boundary: code in the same interpreter can get
around them (CPython's internals can be reached), so this keeps honest mistakes in, not a hostile program. The
verdict stays outside all the same (the harness runs the tests), and the rlimits and timeout still apply.
"""

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.symlink": (1,),
               "os.link": (0, 1), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
               "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "os.mkfifo": (0,),
               "os.mknod": (0,)}
REFUSED_PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "os.system", "subprocess.",
                    "pty.", "socket.", "ctypes.", "os.setuid", "os.setgid", "os.setsid")
REFUSED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"}


def install(work: str) -> None:
    """Install the hook; from then on the process can only write under `work`."""
    work = os.path.realpath(work)
    me = os.getpid()
    realpath, fsdecode = os.path.realpath, os.fsdecode

    def inside(path) -> bool:
        if isinstance(path, int):
            return False  # a bare descriptor: `dir_fd=` tricks make the path unknowable
        text = realpath(fsdecode(path))
        return text == work or text.startswith(work + "/") or text == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox guard: write outside the work directory: {path!r}")
        elif event in PATH_EVENTS:
            for index in PATH_EVENTS[event]:
                if index < len(args) and args[index] is not None and not inside(args[index]):
                    raise PermissionError(f"sandbox guard: {event} outside the work directory: {args[index]!r}")
        elif event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            if event == "signal.pthread_kill" or args[0] != me:
                raise PermissionError(f"sandbox guard: signal to another process ({event})")
        elif event.startswith(REFUSED_PREFIXES):
            raise PermissionError(f"sandbox guard: {event}")
        elif event == "import" and str(args[0]).split(".")[0] in REFUSED_IMPORTS:
            raise PermissionError(f"sandbox guard: import of {args[0]}")

    for name in [m for m in sys.modules if m.split(".")[0] in REFUSED_IMPORTS]:
        del sys.modules[name]  # the program must import these itself, which the hook refuses
    sys.addaudithook(hook)
