"""Where the untrusted program runs: the bubblewrap command line (the boundary) or the weaker in-process guard.

bubblewrap (`bwrap`, what Flatpak uses) starts the worker in new user, pid, network, ipc, uts, cgroup and mount
namespaces, as uid/gid 65534, with further user namespaces disabled. Its file system is a read-only root holding only
what the interpreter needs: the interpreter, its standard library (site-packages hidden), the shared libraries those
link against (found with `ldd`), and the worker's two files; a private size-limited tmpfs at /tmp (the work
directory); /dev with null, zero and urandom only; a read-only /proc of its own pid namespace; no network interface
but its own loopback. It dies with the harness, in its own session (no terminal to inject into).

bubblewrap maps the sandbox's uid to the uid that started it. Started by root, the sandbox would be uid 0 on the
host: without capabilities, but the owner of every root-owned file it can see (/proc/sys among them) and exempt from
RLIMIT_NPROC. So when the caller is root the harness starts bwrap as uid 65534, and the sandbox is nobody on the host
too. That uid may not reach the files (an interpreter under /root), so as root they are bound from a view: hard
links (copies across file systems) under one world-readable temporary directory made once per process, which also
makes four binds of what would be fifty (each mount costs bwrap time on every sample).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SANDBOX_UID = 65534  # nobody
WORK = "/tmp"  # the work directory inside the sandbox
SUPPORT = "/qb"  # where the worker's files appear inside the sandbox
HERE = Path(__file__).resolve().parent
WORKER_FILES = ("worker.py", "codec.py")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
                "or pass --qb-sandbox guard for the weaker in-process guard")
VIEW_SKIPS = ("test", "tests", "idlelib", "turtledemo", "ensurepip")  # the view leaves test suites out
VIEW_PREFIX = "qb-sandbox-view-"
PYTHON_FLAGS = ("-E", "-s", "-S", "-B", "-X", "utf8")  # no environment, no site-packages, no .pyc written


@dataclass(frozen=True)
class Boundary:
    """How the harness starts a worker: `command` plus the run id; as `run_as` (a host uid) when set; in a fresh
    temporary working directory when `workdir` (the guard; bwrap brings its own)."""

    name: str
    command: tuple[str, ...]
    run_as: int | None
    workdir: bool
    description: str  # what the report records


def interpreter() -> str:
    """The base interpreter (not a virtual environment's), whose prefix holds the standard library."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix, "bin", version)
    return os.path.realpath(base if base.exists() else sys.executable)


def stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    return list(dict.fromkeys(os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib")))


def shared_libraries(files: list[str]) -> list[str]:
    """Every shared library the interpreter and the standard library's extension modules load, as `ldd` finds them
    (the dynamic loader included). ldd runs once per file, so the files go to a few ldd processes at once."""
    chunks = [files[i::8] for i in range(min(8, len(files)))]
    runs = [subprocess.Popen(["ldd", *chunk], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={"LC_ALL": "C"}) for chunk in chunks]
    found = []
    for run in runs:
        for line in run.communicate()[0].splitlines():
            match = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x", line)
            if match:
                found.append(match.group(1))
    return list(dict.fromkeys(found))


def runtime_binds() -> list[tuple[str, str]]:
    """(host path, sandbox path) of everything the worker needs, read-only."""
    python = interpreter()
    binds = [(python, python)]
    extensions = []
    for directory in stdlib_dirs():
        binds.append((directory, directory))
        extensions += [str(p) for p in Path(directory, "lib-dynload").glob("*.so")]
    binds += [(os.path.realpath(lib), lib) for lib in shared_libraries([python, *extensions])]
    binds += [(str(HERE / name), f"{SUPPORT}/{name}") for name in WORKER_FILES]
    if os.path.exists("/etc/ld.so.cache"):  # where the loader finds libraries outside its default directories
        binds.append(("/etc/ld.so.cache", "/etc/ld.so.cache"))
    return list(dict.fromkeys(binds))


def hidden_dirs() -> list[str]:
    """Package directories inside the standard library's directories: the worker gets the standard library only."""
    return [str(p) for d in stdlib_dirs() for name in ("site-packages", "dist-packages") if (p := Path(d, name)).is_dir()]


class View:
    """The sandbox's files as hard links (copies across file systems) under one world-readable directory of this
    process, at their paths inside the sandbox, so that uid 65534 can reach them and a few binds carry them all."""

    def __init__(self, files: list[tuple[str, str]], skip: set[str]) -> None:
        same_disk = [d for d in ("/var/tmp", tempfile.gettempdir())
                     if os.path.isdir(d) and os.stat(d).st_dev == os.stat(files[0][0]).st_dev]
        parent = (same_disk or [tempfile.gettempdir()])[0]
        _remove_stale_views(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f"{VIEW_PREFIX}{os.getpid()}-", dir=parent))
        atexit.register(shutil.rmtree, self.root, True)
        for source, target in files:
            path = self.root / target.lstrip("/")
            for directory in [*reversed(path.relative_to(self.root).parents)][1:]:
                (self.root / directory).mkdir(exist_ok=True)
                (self.root / directory).chmod(0o755)
            if os.path.isdir(source):
                shutil.copytree(source, path, symlinks=True, ignore=shutil.ignore_patterns(*skip),
                                copy_function=_link_or_copy, dirs_exist_ok=True)
            else:
                _link_or_copy(source, path)
        self.root.chmod(0o755)

    def binds(self) -> list[tuple[str, str]]:
        return [(str(entry), f"/{entry.name}") for entry in sorted(self.root.iterdir())]


def _remove_stale_views(parent: str) -> None:
    """Views left by processes that did not exit cleanly."""
    for entry in Path(parent).glob(f"{VIEW_PREFIX}*"):
        pid = entry.name.removeprefix(VIEW_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and entry.owner() == "root":
            shutil.rmtree(entry, ignore_errors=True)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links refused
        shutil.copy2(source, target)


@cache
def bwrap_version(path: str) -> tuple[int, ...]:
    text = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(n) for n in match.groups()) if match else (0, 0, 0)


def bwrap_command(bwrap: str, limits_disk_mb: int, binds: list[tuple[str, str]], hidden: list[str]) -> list[str]:
    command = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
               "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv",
               "--setenv", "HOME", WORK, "--setenv", "TMPDIR", WORK, "--setenv", "LANG", "C.UTF-8",
               "--setenv", "PATH", "/usr/bin:/bin"]
    if bwrap_version(bwrap) >= (0, 8, 0):
        command.append("--disable-userns")  # no nested user namespace, so no capabilities even in one
    for source, target in binds:
        command += ["--ro-bind", source, target]
    for directory in hidden:
        command += ["--tmpfs", directory, "--remount-ro", directory]
    command += ["--proc", "/proc", "--remount-ro", "/proc",
                "--tmpfs", "/dev", *(a for n in ("null", "zero", "urandom") for a in ("--dev-bind", f"/dev/{n}",
                                                                                       f"/dev/{n}")),
                "--remount-ro", "/dev",
                "--size", str(limits_disk_mb * 2**20), "--perms", "0700", "--tmpfs", WORK, "--chdir", WORK,
                "--remount-ro", "/"]
    return command


def bwrap(disk_mb: int) -> Boundary:
    """The bubblewrap boundary; RuntimeError with what to do when bwrap is not installed."""
    path = shutil.which("bwrap")
    if path is None:
        raise RuntimeError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    return _bwrap(path, disk_mb)


@cache
def _bwrap(path: str, disk_mb: int) -> Boundary:
    try:
        binds, hidden = runtime_binds(), hidden_dirs()
    except FileNotFoundError as error:  # no ldd
        raise RuntimeError(f"the sandbox needs {error.filename} to find the interpreter's libraries") from None
    run_as = SANDBOX_UID if os.geteuid() == 0 else None
    if run_as is not None:  # uid 65534 cannot reach everything (an interpreter under /root): bind a view instead
        binds = View(binds, {Path(h).name for h in hidden} | set(VIEW_SKIPS)).binds()
        hidden = []
    python = interpreter()
    command = [*bwrap_command(path, disk_mb, binds, hidden), python, *PYTHON_FLAGS, f"{SUPPORT}/worker.py"]
    version = ".".join(map(str, bwrap_version(path)))
    host_uid = run_as if run_as is not None else os.geteuid()
    return Boundary("bwrap", tuple(command), run_as, False,
                    f"bwrap {version}: uid {SANDBOX_UID} inside, uid {host_uid} on the host")


def guard() -> Boundary:
    """The in-process guard: the worker as a plain child process with an audit hook; not a security boundary."""
    command = (interpreter(), *PYTHON_FLAGS, str(HERE / "worker.py"))
    return Boundary("guard", command, None, True, "guard: in-process audit hook, not a security boundary")
