"""The report directory a session writes: one journal per session, a lock so that one session writes it at a time,
and a write check before any test runs.

    .quantbench/
      quantbench.lock                            the writing session: pid, host, start, command (flock)
      sessions/<YYYYmmdd-HHMMSS.mmm>-<pid>/quantbench.jsonl   every session's journal, never overwritten
      quantbench.jsonl -> sessions/.../quantbench.jsonl   the newest session's journal
      quantbench.json, .md, .csv, .html, plots/  the newest session's report
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import suppress
from itertools import count
from pathlib import Path

from .results import JOURNAL_NAME, append_journal, end_journal, journal_ended, start_journal

try:
    import fcntl
except ImportError:  # Windows: sessions there are not locked against each other
    fcntl = None

LOCK_NAME = "quantbench.lock"
SESSIONS = "sessions"


def unwritable(path: Path, error: OSError) -> str:
    reason = error.strerror or error
    return f"the report directory {path} cannot be written ({reason}): choose another with --qb-report-dir"


class ReportDir:
    """The controller's hold on the report directory for one session (xdist workers write nothing here)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal: Path | None = None  # this session's, created with its first record
        self.notices: list[str] = []  # where earlier sessions' results are, when the user should know
        self.errors: list[str] = []  # writes that failed after the session started
        self.journal_failed = False
        self.held = False  # claimed: this session may write here
        self._lock = None

    def claim(self, command: str) -> None:
        """Create the directory, take its lock and write the holder into it; ValueError naming the problem when
        another session holds it or it cannot be written (a read-only or full disk)."""
        try:
            (self.path / SESSIONS).mkdir(parents=True, exist_ok=True)
            # Held open for the session: the lock lasts as long as the file; "a+" keeps the holder's line readable.
            lock = open(self.path / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise ValueError(unwritable(self.path, error)) from None
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.seek(0)
                holder = lock.read().strip() or "holder unknown"
                lock.close()
                raise ValueError(f"another quantbench session is writing {self.path} ({holder}): let it finish, "
                                 "or give this session its own --qb-report-dir") from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                       f"{command}\n")
            lock.flush()
            os.fsync(lock.fileno())  # a full disk fails here, before any test runs
        except OSError as error:
            with suppress(OSError):  # closing flushes what the full disk refused, and fails again
                lock.close()
            raise ValueError(unwritable(self.path, error)) from None
        self._lock = lock
        try:
            self._keep_earlier_journal()
        except ValueError:
            self.release()
            raise
        self.held = True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None
        self.held = False

    def _keep_earlier_journal(self) -> None:
        """Say where the previous session's results are when it crashed; move a journal that is not a session's
        (written by an older version) into sessions/, where nothing overwrites it."""
        link = self.path / JOURNAL_NAME
        try:
            if link.is_symlink():
                target = link.resolve()
                if target.is_file() and not journal_ended(target):
                    self.notices.append(f"the previous session in {self.path} did not finish: its "
                                        f"{_results(target)} are in {_shown(target)}; "
                                        f"`quantbench report {_shown(target)} --from-journal` rebuilds its report")
            elif link.is_file():
                kept = self._new_session_dir(f"{_stamp(link.stat().st_mtime)}-earlier") / JOURNAL_NAME
                os.replace(link, kept)
                self.notices.append(f"kept the earlier journal {link} ({_results(kept)}) as "
                                    f"{_shown(kept)}; `quantbench report {_shown(kept)} --from-journal` rebuilds "
                                    "its report")
        except OSError as error:
            raise ValueError(unwritable(self.path, error)) from None

    def _new_session_dir(self, name: str) -> Path:
        for n in count():
            folder = self.path / SESSIONS / (f"{name}-{n}" if n else name)
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:  # two sessions of one process in one second (pytester runs)
                continue
        raise AssertionError("unreachable")

    def write(self, record: dict, env) -> None:
        """Journal one finished record; the first starts this session's journal with `env()`. A failed write is
        kept in `errors` and ends journaling, so that only a journal's last line can be cut short."""
        if self.journal_failed or not self.held:
            return
        try:
            if self.journal is None:
                self.journal = self._new_session_dir(f"{_stamp(time.time())}-{os.getpid()}") / JOURNAL_NAME
                start_journal(self.journal, env())
                self._link_newest()
            append_journal(self.journal, record)
        except OSError as error:
            where = self.journal or self.path
            self.journal_failed = True
            self.errors.append(f"could not write the journal {where} ({error.strerror or error}): results from "
                               f"{record.get('test')} on are not journaled")

    def _link_newest(self) -> None:
        link, tmp = self.path / JOURNAL_NAME, self.path / f".{JOURNAL_NAME}.{os.getpid()}"
        try:
            tmp.unlink(missing_ok=True)
            os.symlink(os.path.relpath(self.journal, self.path), tmp)
            os.replace(tmp, link)
        except OSError:  # no symlinks on this file system: the terminal summary names the journal
            with suppress(OSError):
                tmp.unlink()

    def finish(self, exitstatus: int, records: int) -> None:
        """End this session's journal (the next session tells a crashed journal by its missing end)."""
        if self.journal is None or self.journal_failed or not self.held:
            return
        try:
            end_journal(self.journal, int(exitstatus), records)
        except OSError as error:
            self.errors.append(f"could not end the journal {self.journal} ({error.strerror or error})")

    def failed(self, what: str, error: OSError) -> None:
        """A report file that could not be written: say so, and where the journal keeps the results."""
        kept = (f"the journal {_shown(self.journal)} keeps this session's results; `quantbench report "
                f"{_shown(self.journal)} --from-journal --out DIR` rebuilds the report elsewhere"
                if self.journal and not self.journal_failed else "the journal could not keep them all either")
        self.errors.append(f"could not write {what} ({error.strerror or error}{_filename(error)}): {kept}")


def _stamp(seconds: float) -> str:
    """Local time to the millisecond: session folders sort in the order the sessions started."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"


def _results(journal: Path) -> str:
    """'3 finished results' in a journal (its record lines)."""
    records = 0
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        records += isinstance(data, dict) and "test" in data
    return f"{records} finished result{'' if records == 1 else 's'}"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it: short in messages, still usable."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _filename(error: OSError) -> str:
    return f": {error.filename}" if error.filename else ""
