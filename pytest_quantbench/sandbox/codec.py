"""The values and messages that cross between the parent, the harness and the sandboxed worker: plain data only.

A value is None, bool, int, float, str, bytes, or a list, tuple, dict, set or frozenset of values. Each is a tag byte
and its payload: ints as signed big-endian bytes and floats by `float.hex` (both exact, linear in size), text as
UTF-8, containers as a count and their items. Nothing is ever unpickled or evaluated: decoding builds builtins from
checked bytes, so the worst a hostile peer can send is a wrong answer or a message that is refused. A message is a
4-byte length and one value; both ends refuse one longer than MAX_MESSAGE.

The format is this small one rather than JSON so that the harness and the worker, which start once per sample, need
no module beyond the interpreter's start-up set (json pulls in re and compiles its patterns). This module is
imported by the harness and, inside the sandbox, by the worker, as a top-level module; it uses os, select and time.
"""

from __future__ import annotations

import os
import select
import time

MAX_MESSAGE = 8 * 2**20  # bytes in one message
MAX_DEPTH = 100  # nesting of containers in one value
# Members of sets and keys of dicts in one message: a set of ints built to collide (multiples of the hash modulus)
# is quadratic to make, and this many keep even that under a second.
MAX_MEMBERS = 10_000
REASON_CHARS = 300  # of an error message carried back: enough to read, too little to flood a report
SEQUENCES = {b"l"[0]: list, b"t"[0]: tuple, b"S"[0]: set, b"F"[0]: frozenset}
SEQUENCE_TAGS = {kind: bytes([tag]) for tag, kind in SEQUENCES.items()}


class CodecError(ValueError):
    """A value that cannot be carried, or bytes that break the format."""


class Timeout(Exception):
    """The deadline passed before a whole message went or came."""


class Closed(Exception):
    """The other end closed the channel."""


def _sized(tag: bytes, payload: bytes) -> bytes:
    return tag + len(payload).to_bytes(4, "big") + payload


def encode(value, depth: int = 0) -> bytes:
    """The bytes of `value`; CodecError for anything else (a generator, an object, a function)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH}")
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        number = int.__index__(value)  # base methods: a subclass's overrides do not run
        return _sized(b"i", number.to_bytes((number.bit_length() + 8) // 8, "big", signed=True))
    if isinstance(value, float):
        return _sized(b"f", float.hex(value).encode())
    if isinstance(value, str):
        return _sized(b"s", str.encode(value, "utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray)):
        return _sized(b"y", bytes(value))
    for kind, tag in SEQUENCE_TAGS.items():
        if isinstance(value, kind):
            items = [encode(item, depth + 1) for item in kind.__iter__(value)]
            return tag + len(items).to_bytes(4, "big") + b"".join(items)
    if isinstance(value, dict):
        pairs = [encode(k, depth + 1) + encode(v, depth + 1) for k, v in dict.items(value)]
        return b"d" + len(pairs).to_bytes(4, "big") + b"".join(pairs)
    raise CodecError(f"cannot carry a value of type {type(value).__name__}")


def decode(data: bytes):
    """The value `data` (from `encode`) stands for; CodecError for anything `encode` would not make."""
    value, end = _decode(memoryview(data), 0, 0, [MAX_MEMBERS])
    if end != len(data):
        raise CodecError("trailing bytes after the value")
    return value


def _count(data: memoryview, at: int) -> tuple[int, int]:
    if at + 4 > len(data):
        raise CodecError("truncated value")
    return int.from_bytes(data[at:at + 4], "big"), at + 4


def _decode(data: memoryview, at: int, depth: int, members: list[int]):
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH}")
    if at >= len(data):
        raise CodecError("truncated value")
    tag, at = data[at], at + 1
    if tag in b"N10":
        return {b"N"[0]: None, b"1"[0]: True, b"0"[0]: False}[tag], at
    if tag in b"ifsy":
        size, at = _count(data, at)
        if at + size > len(data):
            raise CodecError("truncated value")
        payload, at = bytes(data[at:at + size]), at + size
        try:
            if tag == b"i"[0]:
                return int.from_bytes(payload, "big", signed=True), at
            if tag == b"f"[0]:
                return float.fromhex(payload.decode("ascii")), at
            return (payload.decode("utf-8", "surrogatepass") if tag == b"s"[0] else payload), at
        except ValueError as error:  # not a float, not UTF-8
            raise CodecError(f"malformed value ({error})") from None
    if tag in SEQUENCES or tag == b"d"[0]:
        count, at = _count(data, at)
        if count > len(data) - at:  # every item takes a byte at least
            raise CodecError("truncated value")
        if tag not in b"lt":
            members[0] -= count
            if members[0] < 0:
                raise CodecError(f"more than {MAX_MEMBERS} set members and dict keys in one message")
        items = []
        for _ in range(count * (2 if tag == b"d"[0] else 1)):
            item, at = _decode(data, at, depth + 1, members)
            items.append(item)
        try:
            if tag == b"d"[0]:
                return dict(zip(items[::2], items[1::2])), at
            return SEQUENCES[tag](items), at
        except TypeError as error:  # an unhashable key or member
            raise CodecError(f"malformed value ({error})") from None
    raise CodecError(f"malformed value (tag {tag})")


def write_message(fd: int, value, deadline: float | None = None) -> None:
    """Send one value; with a deadline `fd` must be non-blocking, and Timeout is raised at it."""
    data = encode(value)
    if len(data) > MAX_MESSAGE:
        raise CodecError(f"message of {len(data)} bytes (at most {MAX_MESSAGE})")
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise Timeout
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise Timeout
        chunk = os.read(fd, min(left, 2**20))
        if not chunk:
            raise Closed
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, deadline: float | None = None) -> list:
    """The next message (a non-empty list whose first item is a str) from `fd`; Timeout at `deadline`
    (time.monotonic()), Closed at end of file, CodecError for an oversized or malformed one."""
    size = int.from_bytes(_read_exactly(fd, 4, deadline), "big")
    if size > MAX_MESSAGE:
        raise CodecError(f"message of {size} bytes (at most {MAX_MESSAGE})")
    message = decode(_read_exactly(fd, size, deadline))
    if type(message) is not list or not message or type(message[0]) is not str:
        raise CodecError("malformed message")
    return message


def read_all(fd: int) -> object:
    """One message-sized value read to the end of `fd` (a job or a verdict between the parent and the harness)."""
    chunks = []
    while chunk := os.read(fd, 2**20):
        chunks.append(chunk)
    return decode(b"".join(chunks))
