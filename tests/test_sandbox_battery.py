"""Hostile programs against the bubblewrap boundary. Every case is a wrong solution that also attacks, and each must be
contained: it fails (no forged pass), nothing outside changed (files, a FIFO, the interpreter's own files, the kernel
log), no other process was signalled (a victim that logs every signal it gets), no connection reached the test's
listeners, and nothing it started is left running. Where the attack itself can tell that it worked, its tests pass
exactly then (`candidate() == 'escaped'`), so an escape would show as a pass too.

The verdict attacks (forging a pass) run under the weaker guard as well: the harness outside judges both."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest

from pytest_quantbench.sandbox import Limits, Sample, run_sample, unavailable
from pytest_quantbench.sandbox import boundary as boundaries

pytestmark = pytest.mark.skipif(bool(unavailable("bwrap")), reason=str(unavailable("bwrap")))

FAST = Limits(timeout_s=5.0)
SHORT = Limits(timeout_s=1.5)
ESCAPED = "def check(candidate):\n    assert candidate() == 'escaped'\n"
SECRET = "qb-battery-secret-4f1c"
SIGNAL_LOGGER = """
import signal, sys, time
log = open(sys.argv[1], 'a', buffering=1)
for number in set(range(1, signal.NSIG)) - {signal.SIGKILL, signal.SIGSTOP}:
    try:
        signal.signal(number, lambda n, frame: log.write(f'{n}\\n'))
    except (OSError, ValueError, RuntimeError):
        pass
print('ready', flush=True)
while True:
    time.sleep(1)
"""


@dataclass(frozen=True)
class Case:
    name: str
    program: str  # a Template: $outside, $fifo, $victim, $parent, $port, $abstract, $unix, $marker, $stdlib, $secret
    statuses: tuple[str, ...] = ("failed",)
    test: str = ESCAPED
    limits: Limits = FAST
    verdict_attack: bool = False  # also run under the guard


CASES = [
    # --- the escapes seen with the old guard ---
    Case("device_via_dir_fd", """
import os
def solve():
    d = os.open('/dev', os.O_RDONLY)
    opened = []
    for name in ('loop0', 'vda', 'sda', 'nvme0n1', 'kmsg', 'mem', 'port', 'console', 'tty', 'full', 'shm'):
        try:
            os.close(os.open(name, os.O_WRONLY, dir_fd=d))
            opened.append(name)
        except OSError:
            pass
    return 'escaped' if opened else 'contained'
"""),
    Case("kernel_log_write", """
import os
def solve():
    for path in ('/dev/kmsg', '/proc/self/root/dev/kmsg', '/proc/1/root/dev/kmsg', '/proc/kmsg'):
        try:
            with open(path, 'w') as handle:
                handle.write('$marker\\n')
            return 'escaped'
        except OSError:
            pass
    try:
        os.mknod('/tmp/kmsg', 0o20600, os.makedev(1, 11))
        open('/tmp/kmsg', 'w').write('$marker\\n')
        return 'escaped'
    except OSError:
        return 'contained'
"""),
    Case("fifo_outside", """
import os
def solve():
    for path in ('$fifo', '/proc/$parent/root$fifo', '/proc/1/root$fifo'):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b'$marker')
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("signal_other_processes", """
import os, signal
def solve():
    hit = []
    for pid in ($victim, $parent):
        for sig in (signal.SIGTERM, signal.SIGSTOP, signal.SIGUSR1):
            try:
                os.kill(pid, sig)
                hit.append(pid)
            except OSError:
                pass
    return 'escaped' if hit else 'contained'
"""),
    Case("rt_sigqueueinfo_via_ctypes", """
import ctypes, signal
def solve():
    libc = ctypes.CDLL(None, use_errno=True)
    hit = [pid for pid in ($victim, $parent) if libc.sigqueue(pid, signal.SIGTERM, ctypes.c_void_p(0)) == 0]
    return 'escaped' if hit else 'contained'
"""),
    Case("audit_hook_switched_off_then_ctypes", """
import gc, ctypes
def solve():
    for thing in gc.get_objects():  # the old guard's hook and its flag were findable like this
        if callable(thing) and getattr(thing, '__name__', '') == 'hook':
            return 'a hook to switch off'
    libc = ctypes.CDLL(None, use_errno=True)
    return 'escaped' if libc.kill($victim, 9) == 0 or libc.kill($parent, 19) == 0 else 'contained'
"""),
    Case("forge_json_dumps_and_exit", """
import json, os, sys
json.dumps = lambda *args, **kwargs: '{"status": "passed", "reason": "", "output": ""}'
print(json.dumps({}))
sys.stderr.write(json.dumps({}) + '\\n')
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
def solve():
    return 'wrong'
""", verdict_attack=True),
    Case("forge_token_from_main", """
import os, sys
main = sys.modules.get('__main__')
for name, value in list(vars(main).items()):
    if isinstance(value, str) and len(value) == 32:
        print(value, 'passed')
for fd in range(3, 64):
    try:
        os.write(fd, b'{"status": "passed"}\\n')
    except OSError:
        pass
os._exit(0)
def solve():
    return 'wrong'
""", verdict_attack=True),
    Case("forge_frames_on_every_fd", """
import json, os
def solve():
    for fd in range(0, 256):
        for message in (['passed'], ['verdict', 'passed'], ['ready'], ['load_error', 'passed']):
            data = json.dumps(message).encode()
            try:
                os.write(fd, len(data).to_bytes(4, 'big') + data)
            except OSError:
                pass
    return 'wrong'
""", verdict_attack=True),
    Case("exit_zero_before_the_tests", "import os\nos._exit(0)\ndef solve():\n    return 'escaped'\n",
         verdict_attack=True),
    Case("exit_zero_inside_the_call", "import os\ndef solve():\n    os._exit(0)\n", verdict_attack=True),
    Case("system_exit_inside_the_call", "import sys\ndef solve():\n    sys.exit(0)\n", verdict_attack=True),
    Case("keyboard_interrupt_inside_the_call", "def solve():\n    raise KeyboardInterrupt\n", verdict_attack=True),
    Case("kill_itself", "import os, signal\ndef solve():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
         verdict_attack=True),
    Case("always_equal_object", """
class Anything:
    def __eq__(self, other):
        return True
def solve():
    return Anything()
""", verdict_attack=True),
    Case("always_equal_str_subclass", """
class Anything(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__
def solve():
    return Anything('wrong')
""", verdict_attack=True),
    Case("patch_builtins_and_assert", """
import builtins
builtins.AssertionError = type('AssertionError', (Exception,), {})
builtins.__dict__['__debug__'] = False
def solve():
    return 'wrong'
""", verdict_attack=True),
    Case("huge_return_value", "def solve():\n    return 'x' * 100_000_000\n", verdict_attack=True),
    Case("oversized_frame_header", """
import os, sys
def solve():
    os.write(int(sys.argv[3]), (2**31 - 1).to_bytes(4, 'big') + b'[')
    return 'escaped'
""", verdict_attack=True),
    Case("deeply_nested_frame", """
import os, sys
def solve():
    data = b'[' * 100_000 + b']' * 100_000
    os.write(int(sys.argv[3]), len(data).to_bytes(4, 'big') + data)
    return 'escaped'
""", verdict_attack=True),
    Case("hash_collisions_for_the_harness", """
import os, sys
def solve():
    # A reply written by hand: a set of ints that all hash alike (multiples of the hash modulus) is quadratic to
    # build; the harness caps set members per message and holds its deadline while decoding.
    def number(value):
        raw = value.to_bytes((value.bit_length() + 8) // 8, 'big', signed=True)
        return b'i' + len(raw).to_bytes(4, 'big') + raw
    modulus = sys.hash_info.modulus
    for count in (10_000, 200_000):
        body = (b'l' + (2).to_bytes(4, 'big') + b's' + (6).to_bytes(4, 'big') + b'return' + b'S'
                + count.to_bytes(4, 'big') + b''.join(number(k * modulus) for k in range(1, count + 1)))
        os.write(int(sys.argv[3]), len(body).to_bytes(4, 'big') + body)
    return 'escaped'
""", statuses=("failed", "timeout"), limits=SHORT, verdict_attack=True),
    Case("slow_drip_reply", """
import os, sys, time
def solve():
    os.write(int(sys.argv[3]), (100).to_bytes(4, 'big'))
    for _ in range(100):
        os.write(int(sys.argv[3]), b' ')
        time.sleep(0.5)
""", statuses=("timeout",), limits=SHORT, verdict_attack=True),
    Case("closes_the_channel_and_loops", """
import os, sys
def solve():
    os.close(int(sys.argv[2]))
    os.close(int(sys.argv[3]))
    while True:
        pass
""", verdict_attack=True),
    # --- resources ---
    Case("infinite_loop_at_load", "while True:\n    pass\n", statuses=("timeout",), limits=SHORT),
    Case("infinite_loop_in_the_call", "def solve():\n    while True:\n        pass\n", statuses=("timeout",),
         limits=SHORT),
    Case("memory_hog", "def solve():\n    hoard = []\n    while True:\n        hoard.append(bytearray(2**24))\n"),
    Case("fork_loop", """
import os
def solve():
    forked = 0
    for _ in range(1000):
        try:
            if os.fork() == 0:
                while True:
                    pass
            forked += 1
        except OSError:
            break
    return 'escaped' if forked else 'contained'
"""),
    Case("setsid_children", """
import os, time
def solve():
    try:
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        return 'escaped'
    except OSError:
        return 'contained'
"""),
    Case("threads", """
import threading
def solve():
    ran = []
    try:
        thread = threading.Thread(target=lambda: ran.append(1))
        thread.start()
        thread.join()
    except RuntimeError:
        pass
    return 'escaped' if ran else 'contained'
"""),
    Case("subprocess_and_exec", """
import os, subprocess, sys
def solve():
    try:
        subprocess.run(['/bin/sh', '-c', 'touch $outside/pwned'], check=True)
        return 'escaped'
    except (OSError, subprocess.SubprocessError):
        pass
    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '$marker'])
"""),
    Case("huge_output", "import sys\ndef solve():\n    while True:\n        sys.stdout.write('x' * 2**20)\n"),
    Case("disk_filler", """
def solve():
    try:
        for i in range(10_000):
            open(f'/tmp/fill{i}', 'wb').write(b'x' * 2**20 * 8)
    except OSError:
        pass
    return 'contained'
"""),
    # --- network ---
    Case("tcp_to_the_tests_loopback_listener", """
import socket
def solve():
    try:
        socket.create_connection(('127.0.0.1', $port), timeout=1).sendall(b'$marker')
        return 'escaped'
    except OSError:
        return 'contained'
"""),
    Case("unix_sockets_outside", """
import socket
def solve():
    for address in ('\\0$abstract', '$unix', '/proc/$parent/root$unix'):
        try:
            client = socket.socket(socket.AF_UNIX)
            client.connect(address)
            client.sendall(b'$marker')
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("dns_and_udp_to_the_internet", """
import socket
def solve():
    try:
        socket.getaddrinfo('pypi.org', 443)
        return 'escaped'
    except OSError:
        pass
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'$marker', ('8.8.8.8', 53))
        return 'escaped'
    except OSError:
        return 'contained'
"""),
    # --- files ---
    Case("write_delete_rename_outside", """
import os, shutil
def solve():
    attempts = [lambda: open('$outside/secret.txt', 'w').write('pwned'), lambda: os.remove('$outside/secret.txt'),
                lambda: os.rename('$outside/secret.txt', '$outside/moved.txt'),
                lambda: shutil.rmtree('$outside/folder'), lambda: open('$outside/new.txt', 'w')]
    for attempt in attempts:
        try:
            attempt()
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    # The targets inside are this checkout's worker files (bound read-only like the interpreter's): if the boundary
    # ever let a write through, the damage would be to files git can restore, and the snapshot would show it.
    Case("write_the_sandboxes_own_files", """
import os, shutil
def solve():
    attempts = [lambda: open('/qb/codec.py', 'a').write('pwned'), lambda: os.remove('/qb/codec.py'),
                lambda: os.truncate('/qb/worker.py', 0), lambda: os.chmod('/qb/worker.py', 0o777),
                lambda: os.rename('/qb/codec.py', '/qb/codec.bak'), lambda: open('$stdlib/pwned.py', 'w'),
                lambda: os.utime('/qb/worker.py', (0, 0)), lambda: os.mkdir('$stdlib/pwned'),
                lambda: shutil.rmtree('/qb')]
    for attempt in attempts:
        try:
            attempt()
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("hard_links", """
import os
def solve():
    for source, target in (('/qb/codec.py', '/tmp/codec.py'), ('/qb/codec.py', '/qb/codec.link'),
                           ('$outside/secret.txt', '/tmp/secret.txt'), ('/qb/worker.py', '$stdlib/worker.py')):
        try:
            os.link(source, target)
            open(target, 'a').write('pwned')
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("symlink_tricks", """
import os
def solve():
    targets = ('/qb/codec.py', '/proc/self/root/qb/codec.py', '/proc/1/root/qb/worker.py', '$outside/secret.txt',
               '/proc/1/cwd/../etc/passwd', '/proc/self/fd/3', '$stdlib/pwned.py')
    for index, target in enumerate(targets):
        link = f'/tmp/link{index}'
        os.symlink(target, link)
        try:
            open(link, 'a').write('pwned')
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("chdir_and_write", """
import os
def solve():
    for directory in ('/', '/proc', '/dev', '/qb', '$stdlib', '/tmp/../..', '$outside'):
        try:
            os.chdir(directory)
            open('pwned', 'w').write('x')
            if directory not in ('/tmp/../..',) and os.path.realpath(directory) != '/tmp':
                return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("read_host_secrets", """
import os
def solve():
    for path in ('/etc/passwd', '/etc/shadow', '/root/.bashrc', '/proc/$parent/environ', '/proc/1/environ',
                 '/proc/self/environ', '/home'):
        try:
            if '$secret' in open(path, errors='replace').read() or path in ('/etc/shadow', '/home'):
                return '$secret'
        except OSError:
            pass
    return 'contained'
""", test=f"def check(candidate):\n    assert candidate() == '{SECRET}'\n"),
    # --- processes and the kernel ---
    Case("proc_of_the_parent", """
import os
def solve():
    for pid in ($parent, $victim):
        for name, mode in (('mem', 'r+b'), ('environ', 'rb'), ('cwd/x', 'w'), ('root$outside/secret.txt', 'w')):
            try:
                open(f'/proc/{pid}/{name}', mode).write(b'' if 'b' in mode else '')
                return 'escaped'
            except OSError:
                pass
    return 'contained'
"""),
    Case("ptrace", """
import ctypes
def solve():
    libc = ctypes.CDLL(None, use_errno=True)
    PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
    for pid in ($victim, $parent):
        for request in (PTRACE_ATTACH, PTRACE_SEIZE):
            if libc.ptrace(request, pid, None, None) == 0:
                return 'escaped'
    return 'contained'
"""),
    Case("prctl_capabilities", """
import ctypes
def solve():
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, PR_SET_MM, PR_SET_MM_START_CODE = 47, 2, 21, 35, 1
    raised = libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0) == 0
    mm = libc.prctl(PR_SET_MM, PR_SET_MM_START_CODE, 0, 0, 0) == 0
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: harmless, but tried
    return 'escaped' if raised or mm else 'contained'
"""),
    Case("signals_to_the_process_group", """
import os, signal
def solve():
    for target in (0, -1):
        try:
            os.kill(target, signal.SIGTERM)
        except OSError:
            pass
    os.killpg(os.getpgrp(), signal.SIGKILL)
    return 'wrong'
"""),
    Case("kill_every_pid", """
import os, signal
def solve():
    hit = 0
    for pid in range(2, 5000):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGCONT)
                hit += 1
            except OSError:
                pass
    return 'escaped' if hit else 'contained'
"""),
    Case("raw_syscalls_via_ctypes", """
import ctypes, platform
def solve():
    if platform.machine() != 'x86_64':  # the numbers below are x86-64's
        return 'contained'
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_kill, SYS_setuid, SYS_unshare, CLONE_NEWUSER, CLONE_NEWNS = 62, 105, 272, 0x10000000, 0x20000
    worked = [libc.syscall(SYS_kill, $victim, 18) == 0, libc.syscall(SYS_setuid, 0) == 0,
              libc.syscall(SYS_unshare, CLONE_NEWUSER) == 0, libc.syscall(SYS_unshare, CLONE_NEWNS) == 0,
              libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0, libc.chroot(b'/tmp') == 0]
    return 'escaped' if any(worked) else 'contained'
"""),
    Case("cffi_and_site_packages", """
def solve():
    for name in ('cffi', '_cffi_backend', 'numpy', 'torch', 'pytest', 'pytest_quantbench'):
        try:
            __import__(name)
            return 'escaped'
        except ImportError:
            pass
    return 'contained'
"""),
    Case("host_sysctl_write", """
def solve():
    for path in ('/proc/sys/kernel/core_uses_pid', '/proc/sys/kernel/core_pattern', '/proc/sysrq-trigger'):
        try:
            value = open(path).read() if 'sysrq' not in path else ''
            with open(path, 'w') as handle:  # the value it already has: harmless if this ever worked
                handle.write(value)
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
    Case("setuid_root_and_terminal_injection", """
import fcntl, os, termios
def solve():
    for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: open('/dev/tty', 'w'),
                    lambda: fcntl.ioctl(0, termios.TIOCSTI, b'x'), lambda: fcntl.ioctl(2, termios.TIOCSTI, b'x')):
        try:
            attempt()
            return 'escaped'
        except OSError:
            pass
    return 'contained'
"""),
]


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """A process outside the sandbox that logs every catchable signal it receives."""
    log = tmp_path_factory.mktemp("victim") / "signals.log"
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_LOGGER, str(log)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    yield process, log
    process.kill()
    process.wait()


@pytest.fixture
def world(tmp_path, victim, monkeypatch):
    """What a hostile program must not touch, with a way to check it afterwards."""
    monkeypatch.setenv("QB_BATTERY_SECRET", SECRET)  # in this process's environment, for /proc/<pid>/environ
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "folder" / "inner.txt").write_text("keep me")
    os.mkfifo(outside / "fifo")
    fifo = os.open(outside / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    listeners = [socket.create_server(("127.0.0.1", 0)), socket.socket(socket.AF_UNIX),
                 socket.socket(socket.AF_UNIX)]
    abstract = f"qb-battery-{os.getpid()}-{time.monotonic_ns()}"
    listeners[1].bind("\0" + abstract)
    listeners[2].bind(str(outside / "unix.sock"))
    for listener in listeners:
        listener.listen()
        listener.setblocking(False)
    marker = f"qb-marker-{time.monotonic_ns()}"
    values = {"outside": str(outside), "fifo": str(outside / "fifo"), "victim": victim[0].pid, "parent": os.getpid(),
              "port": listeners[0].getsockname()[1], "abstract": abstract, "unix": str(outside / "unix.sock"),
              "marker": marker, "stdlib": os.path.dirname(os.path.realpath(os.__file__)), "secret": SECRET}
    watched = [Path(boundaries.HERE, name) for name in boundaries.WORKER_FILES]
    world = World(values, outside, fifo, listeners, victim, watched)
    yield world
    os.close(fifo)
    for listener in listeners:
        listener.close()


class World:
    def __init__(self, values, outside, fifo, listeners, victim, watched):
        self.values, self.outside, self.fifo, self.listeners = values, outside, fifo, listeners
        self.victim, self.log = victim
        self.watched = watched
        self.before = self.snapshot()

    def snapshot(self) -> dict:
        files = {str(p.relative_to(self.outside)): p.read_bytes() if p.is_file() else p.stat().st_mode
                 for p in sorted(self.outside.rglob("*"))}
        files.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
                      for p in self.watched})
        files["stdlib listing"] = sorted(os.listdir(self.values["stdlib"]))
        return files

    def assert_contained(self, result) -> None:
        assert self.snapshot() == self.before, "something outside changed"
        try:
            assert os.read(self.fifo, 1024) == b"", "the FIFO outside was written"
        except BlockingIOError:
            pass
        assert self.victim.poll() is None and self.log.read_text() == "", "the victim was signalled"
        state = Path(f"/proc/{self.victim.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T", "the victim was stopped"
        for listener in self.listeners:
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert not kernel_log_has(self.values["marker"]), "the kernel log was written"
        assert left_running(result.run_id, self.values["marker"]) == [], "something is left running"


def kernel_log_has(marker: str) -> bool:
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False  # not readable here (not root): the sandbox could not write it either
    try:
        while True:
            try:
                if marker.encode() in os.read(fd, 8192):
                    return True
            except BlockingIOError:
                return False
            except OSError as error:
                if error.errno != errno.EPIPE:  # records overwritten while reading
                    raise
    finally:
        os.close(fd)


def left_running(*tokens: str) -> list[int]:
    """Processes whose command line or environment carries one of `tokens` (the run id, the case's marker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(token.encode() in text for token in tokens):
            found.append(int(entry.name))
    return found


def judge(case: Case, world: World, boundary: str):
    program = Template(case.program).substitute(world.values)
    return run_sample(Sample("", program, case.test, "solve"), case.limits, boundary)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_program_is_contained(case, world):
    result = judge(case, world, "bwrap")
    if case.statuses == ("passed",):  # the worker rewritten to answer right: a pass it earned, see below
        assert result.passed, result
    else:
        assert not result.passed and result.status in case.statuses, (result.status, result.reason)
    world.assert_contained(result)


@pytest.mark.parametrize("case", [c for c in CASES if c.verdict_attack],
                         ids=[c.name for c in CASES if c.verdict_attack])
def test_verdict_attacks_fail_under_the_guard_too(case, world):
    result = judge(case, world, "guard")
    if case.statuses == ("passed",):
        assert result.passed, result
    else:
        assert not result.passed and result.status in case.statuses, (result.status, result.reason)
    assert left_running(result.run_id, world.values["marker"]) == []


PATCH_THE_WORKER = """
import sys
worker = sys.modules['__main__']
original = worker.write_message
def forced(fd, message, deadline=None):  # every answer the worker sends becomes 'escaped'
    original(fd, ['return', 'escaped'] if message[0] == 'return' else message, deadline)
worker.write_message = forced
def solve():
    return 'wrong'
"""


def test_rewriting_the_worker_only_chooses_its_own_answers(world):
    # The program may rewrite the worker that answers for it: that is choosing its answer ('escaped', which these
    # tests accept), no more. The tests run outside, so against tests that want another answer it fails.
    forced = Case("patched_worker", PATCH_THE_WORKER)
    assert judge(forced, world, "bwrap").passed
    other = Case("patched_worker", PATCH_THE_WORKER, test="def check(candidate):\n    assert candidate() == 'right'\n")
    result = judge(other, world, "bwrap")
    assert result.status == "failed" and result.reason == "AssertionError: "
    world.assert_contained(result)


def test_the_battery_is_big_enough():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def test_a_killed_harness_takes_the_sandbox_with_it(world):
    # The sandbox dies with its harness (bwrap --die-with-parent): kill the harness mid-sample, nothing stays.
    program = "import time\ndef solve():\n    time.sleep(60)\n"
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(
        run_sample(Sample("", program, ESCAPED, "solve"), Limits(timeout_s=30), "bwrap")))
    thread.start()
    harness = bwrap = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and bwrap is None:
        harnesses = [p for p in children_of(os.getpid()) if b"harness.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
        if harnesses:
            harness = harnesses[0]
            bwrap = next(iter(children_of(harness)), None)
        time.sleep(0.05)
    assert bwrap is not None, "the sandbox never started"
    time.sleep(0.5)  # let the worker reach the call
    os.kill(harness, signal.SIGKILL)
    thread.join(30)
    assert outcome and outcome[0].status == "error" and "no verdict" in outcome[0].reason
    deadline = time.monotonic() + 5
    while left_running(outcome[0].run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left_running(outcome[0].run_id) == []
