"""
Task entries as producers push them, and what a run of one comes to.

The entry format and the wording of error messages are those of Goophry
1.1.0, so that producers, failed-list readers and people's alerts keep
working.
"""

from __future__ import annotations

import base64
import errno
import json
import os

import attrs

#: The field of a retried entry that counts its runs; the daemon's own.
ATTEMPT_FIELD = "GoophryAttempt"


@attrs.frozen
class Task:
    """A valid entry: run C{script} of this type with C{args}."""

    type: str
    args: tuple[str, ...]
    payload: bytes
    #: Which run of the entry this is, from its C{GoophryAttempt} field.
    attempt: int = 1
    #: Its C{Env} field as decoded, unchecked: what applies depends on its type.
    env: object = attrs.field(default=None, eq=False)


@attrs.frozen
class InvalidEntry:
    """An entry that is not a task; it is stored, never dropped."""

    type: str
    payload: bytes
    reason: str


def payload_text(payload: bytes) -> str:
    """
    An entry as text, for logs and messages: what a reader wants to see, not
    a Python bytes repr; bytes that are not UTF-8 are shown as C{\\xff}.
    """
    return payload.decode("utf-8", "backslashreplace")


def parse_entry(task_type: str, payload: bytes) -> Task | InvalidEntry:
    """Decode one queue entry, C{{"Args":["p1","p2"]}}."""

    def invalid(reason: str) -> InvalidEntry:
        return InvalidEntry(task_type, payload, f"invalid task entry: {reason}")

    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        return invalid(f"not valid UTF-8 (byte {e.start})")
    try:
        data = json.loads(text)
    except ValueError as e:
        return invalid(f"not JSON: {e}")
    if not isinstance(data, dict):
        return invalid(f"expected a JSON object, got {type(data).__name__}")
    if not _has_field(data, "Args"):
        return invalid("Args is missing")
    args = _field(data, "Args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return invalid("Args must be an array of strings")
    # Valid UTF-8 decodes to valid Unicode: only a \u escape can make a
    # lone surrogate, which no argv can carry.
    if "\\u" in text:
        for index, arg in enumerate(args):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                return invalid(f"Args[{index}] is not valid Unicode")
    attempt = data.get(ATTEMPT_FIELD)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        attempt = 1
    return Task(task_type, tuple(args), payload, attempt, _field(data, "Env"))


def _has_field(data: dict[str, object], name: str) -> bool:
    return name in data or any(key.lower() == name.lower() for key in data)


def _field(data: dict[str, object], name: str) -> object:
    """A field of an entry; Go's decoder matches field names case-insensitively."""
    if name in data:
        return data[name]
    for key, value in data.items():
        if key.lower() == name.lower():
            return value
    return None


@attrs.frozen
class Outcome:
    """How one run of a script ended."""

    exit_code: int | None = None
    signal: int | None = None
    output: bytes = b""
    truncated: int = 0
    start_error: str | None = None
    timed_out: float | None = None
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        """Only a silent exit with status 0, in time, is a success."""
        return (
            self.exit_code == 0
            and not self.output
            and not self.truncated
            and self.timed_out is None
        )

    def error_message(self) -> str:
        """The ErrorMessage the original would store for this run."""
        if self.start_error is not None:
            return self.start_error
        output = self.output.decode("utf-8", "replace")
        if self.truncated:
            output += f"\n... [truncated {self.truncated} bytes]"
        if self.signal is not None:
            status = f"signal: {signal_name(self.signal)}"
        elif self.exit_code or self.timed_out is not None:
            status = f"exit status {self.exit_code}"
        else:
            return output
        if self.timed_out is not None:
            status = f"timed out after {format_seconds(self.timed_out)} ({status})"
        return f"{status}\n{output}" if output else status


# Go's names of the Linux signals (syscall's table), as "signal: ..." shows them.
_GO_SIGNAL_NAMES = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
    16: "stack fault",
    17: "child exited",
    18: "continued",
    19: "stopped (signal)",
    20: "stopped",
    21: "stopped (tty input)",
    22: "stopped (tty output)",
    23: "urgent I/O condition",
    24: "CPU time limit exceeded",
    25: "file size limit exceeded",
    26: "virtual timer expired",
    27: "profiling timer expired",
    28: "window changed",
    29: "I/O possible",
    30: "power failure",
    31: "bad system call",
}


def signal_name(number: int) -> str:
    """The signal's description as Go prints it: C{killed}, C{terminated}."""
    return _GO_SIGNAL_NAMES.get(number, f"signal {number}")


def format_seconds(seconds: float) -> str:
    """Seconds as Go prints a duration: C{30s}, C{1.5s}."""
    return f"{seconds:g}s"


def start_error(script: str, error: BaseException) -> str:
    """The ErrorMessage for a script that could not be started."""
    if isinstance(error, OSError) and error.errno is not None:
        reason = os.strerror(error.errno).lower()
        if error.errno == errno.ENOEXEC:
            reason = "exec format error"
    elif isinstance(error, ValueError) and "null" in str(error):
        reason = "argument contains a NUL byte"
    else:
        reason = str(error)
    return f"fork/exec {script}: {reason}"


def error_script_message(script: str, args: tuple[str, ...], error: str) -> str:
    """
    The one argument ErrorScript gets, in the original's format.  A NUL
    byte cannot be passed in an argument: it is shown as C{\\x00}.
    """
    quoted = "".join(f' "{arg}"' for arg in args)
    return f"{script}{quoted}\n\n{error}".replace("\0", "\\x00")


def failed_entry(
    task: Task | InvalidEntry,
    error: str,
    failed_at: int,
    instance: str,
    attempts: int | None = None,
) -> bytes:
    """
    The JSON stored in the failed list.

    A valid task keeps its Args; an invalid entry keeps its raw payload, in
    C{Payload}, and in C{PayloadBase64} too when it is not valid UTF-8.
    Both say when they failed (C{FailedAt}, unix seconds) and on which
    instance (C{Instance}): readers ignore fields they do not know.

    @param attempts: how many times a task of a type with retries ran.
    """
    record: dict[str, object]
    if isinstance(task, Task):
        record = {"Args": list(task.args), "ErrorMessage": error}
        if attempts is not None:
            record["Attempts"] = attempts
    else:
        record = {
            "Args": None,
            "ErrorMessage": error,
            "Payload": payload_text(task.payload),
        }
        try:
            task.payload.decode("utf-8")
        except UnicodeDecodeError:
            record["PayloadBase64"] = base64.b64encode(task.payload).decode("ascii")
    record["FailedAt"] = failed_at
    record["Instance"] = instance
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
