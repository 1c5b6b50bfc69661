"""
libc's C{posix_spawn} called through ctypes, which releases the GIL.

C{os.posix_spawn} holds the GIL until the child has exec'd (about half a
millisecond), and the reactor stands still meanwhile.  Called through
ctypes from a few threads, the spawn waits outside the GIL, so the reactor
goes on serving Redis and reaping children while new ones start.

Everything that is the same for every spawn (the attributes: a new process
group, default signal handlers, an empty signal mask; the environment) is
built once.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

# glibc's flag values (spawn.h).
_SETPGROUP = 0x02
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08

# Larger than glibc's posix_spawnattr_t (336 bytes), file actions (80) and
# sigset_t (128), so the layout never matters.
_OPAQUE = 1024


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.posix_spawn.restype = ctypes.c_int
        libc.posix_spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        for fn in ("posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy"):
            getattr(libc, fn).argtypes = [ctypes.c_void_p]
        libc.posix_spawn_file_actions_adddup2.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        libc.posix_spawnattr_init.argtypes = [ctypes.c_void_p]
        libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        libc.posix_spawnattr_setpgroup.argtypes = [ctypes.c_void_p, ctypes.c_int]
        libc.posix_spawnattr_setsigdefault.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        libc.posix_spawnattr_setsigmask.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        libc.sigemptyset.argtypes = [ctypes.c_void_p]
        libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load()


def available() -> bool:
    """Whether libc's posix_spawn can be called here."""
    return _libc is not None


def _strings(values: Iterable[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """C{values} as a C array of strings ending in C{NULL}, as argv and envp are."""
    items: list[bytes | None] = list(values)
    items.append(None)
    return (ctypes.c_char_p * len(items))(*items)


def environment(
    environ: Mapping[str, str] | Mapping[bytes, bytes],
) -> ctypes.Array[ctypes.c_char_p]:
    """C{environ} as C{envp}: C{NAME=value} strings ending in C{NULL}."""
    return _strings(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items())


#: A spawn handed to the threads: executable, argv, what to call, and envp.
_Job = tuple[
    bytes, list[bytes], Callable[[int, int, int], object], "ctypes.Array[ctypes.c_char_p] | None"
]


class LibcSpawner:
    """
    Spawns children from C{threads} threads; each result comes back to the
    caller's C{deliver} function (the reactor's C{callFromThread}).
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        default_signals: Sequence[int],
        stdin_fd: int,
        deliver: Callable[..., object],
        threads: int = 2,
    ) -> None:
        """
        @param environ: the children's environment, encoded once here.
        @param default_signals: signals reset to their default in the child.
        @param stdin_fd: the descriptor the children read as stdin.
        @param deliver: runs a callable in the caller's thread.
        @param threads: how many spawning threads to start.
        """
        assert _libc is not None
        self._libc = _libc
        self._deliver = deliver
        self._stdin_fd = stdin_fd
        self._envp = environment(environ)
        self._attr = ctypes.create_string_buffer(_OPAQUE)
        sigdef = ctypes.create_string_buffer(_OPAQUE)
        empty = ctypes.create_string_buffer(_OPAQUE)
        libc = self._libc
        libc.posix_spawnattr_init(self._attr)
        libc.sigemptyset(sigdef)
        for number in default_signals:
            libc.sigaddset(sigdef, number)
        libc.sigemptyset(empty)
        libc.posix_spawnattr_setsigdefault(self._attr, sigdef)
        libc.posix_spawnattr_setsigmask(self._attr, empty)
        libc.posix_spawnattr_setpgroup(self._attr, 0)
        libc.posix_spawnattr_setflags(self._attr, _SETPGROUP | _SETSIGDEF | _SETSIGMASK)
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        # Results wait here; the caller's thread is woken once per batch.
        self._results: collections.deque[tuple[Callable[..., object], int, int, int]]
        self._results = collections.deque()
        self._wake_pending = False
        # Spawns handed to the threads whose results are not handed back
        # yet; only the caller's thread counts them.
        self._busy = 0
        self._inline_actions = ctypes.create_string_buffer(_OPAQUE)
        self._inline_pid = ctypes.c_int()
        self._threads = [
            threading.Thread(target=self._work, name=f"goophry-spawn-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def spawn(
        self,
        executable: bytes,
        argv: list[bytes],
        done: Callable[[int, int, int], object],
        inline: bool = False,
        envp: ctypes.Array[ctypes.c_char_p] | None = None,
    ) -> None:
        """
        Start C{executable} with stdout and stderr on a new pipe, and call
        C{done(pid, error, fd)}: error 0 or an errno, fd the pipe's reading
        end (non-blocking), or -1 on error.  With C{inline} (the caller is
        idle) and no spawn under way, this one is made at once, in the
        caller's thread, which starts it soonest; otherwise it is handed to
        the threads, and C{done} comes later.

        @param envp: this child's environment (L{environment}), when it is
            not the one given at construction.
        """
        if inline and not self._busy:
            done(*self._spawn(self._inline_actions, self._inline_pid, executable, argv, envp))
            return
        self._busy += 1
        self._jobs.put((executable, argv, done, envp))

    def _spawn(
        self,
        actions: ctypes.Array[ctypes.c_char],
        pid: ctypes.c_int,
        executable: bytes,
        argv: list[bytes],
        envp: ctypes.Array[ctypes.c_char_p] | None,
    ) -> tuple[int, int, int]:
        """One spawn, with this thread's buffers: C{(pid, error, fd)} as L{spawn} gives them."""
        libc = self._libc
        try:
            read_fd, out_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            return 0, e.errno or 1, -1
        os.set_blocking(read_fd, False)
        libc.posix_spawn_file_actions_init(actions)
        libc.posix_spawn_file_actions_adddup2(actions, self._stdin_fd, 0)
        libc.posix_spawn_file_actions_adddup2(actions, out_fd, 1)
        libc.posix_spawn_file_actions_adddup2(actions, out_fd, 2)
        error = libc.posix_spawn(
            ctypes.byref(pid),
            executable,
            actions,
            self._attr,
            _strings(argv),
            self._envp if envp is None else envp,
        )
        libc.posix_spawn_file_actions_destroy(actions)
        os.close(out_fd)
        if error:
            os.close(read_fd)
            return 0, error, -1
        return pid.value, 0, read_fd

    def _work(self) -> None:
        """A spawning thread: spawn each job until C{None} comes."""
        actions = ctypes.create_string_buffer(_OPAQUE)
        pid = ctypes.c_int()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            executable, argv, done, envp = job
            result = self._spawn(actions, pid, executable, argv, envp)
            self._results.append((done, *result))
            if not self._wake_pending:
                self._wake_pending = True
                self._deliver(self._hand_over)

    def _hand_over(self) -> None:
        """In the caller's thread: pass on every result there is."""
        # Reset first: a result added from now on wakes us again.
        self._wake_pending = False
        results = self._results
        while results:
            done, pid, error, fd = results.popleft()
            self._busy -= 1
            done(pid, error, fd)

    def close(self) -> None:
        """Let the threads end."""
        for _ in self._threads:
            self._jobs.put(None)
