"""File-creation timestamps through inotify (ctypes; no third-party module).

File mtimes tick too coarsely here to time a task's start, so the latency
scenario runs C{touch <new path>} and takes the moment inotify reports the
IN_CREATE, on the same clock (time.monotonic_ns) as the push.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time

IN_CREATE = 0x00000100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class CreationWatcher:
    """Watch one directory for new entries; stamp each on arrival."""

    def __init__(self, directory: str) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        self.created: dict[str, int] = {}

    def wait(self, timeout_s: float) -> int:
        """Wait up to timeout_s for events and record them; return how many came."""
        if not self.poller.poll(max(0, int(timeout_s * 1000 + 0.999))):
            return 0
        stamp = time.monotonic_ns()
        return self._drain(stamp)

    def _drain(self, stamp: int) -> int:
        count = 0
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            pos = 0
            while pos < len(buf):
                _, mask, _, size = _HEADER.unpack_from(buf, pos)
                name = buf[pos + _HEADER.size : pos + _HEADER.size + size].rstrip(b"\0")
                pos += _HEADER.size + size
                if mask & IN_CREATE:
                    self.created.setdefault(os.fsdecode(name), stamp)
                    count += 1

    def wait_until(self, deadline_ns: int) -> None:
        """Record events until the monotonic clock reaches deadline_ns."""
        while (left := deadline_ns - time.monotonic_ns()) > 0:
            self.wait(left / 1e9)

    def close(self) -> None:
        """Release the inotify descriptor."""
        os.close(self.fd)
