"""
libc's C{posix_spawn} called from threads, outside the GIL.

C{os.posix_spawn} holds the GIL until the child has exec'd (about half a
millisecond), and the reactor stands still meanwhile.  Called from a few
threads with the GIL released, the spawn waits outside it, so the reactor
goes on serving Redis and reaping children while new ones start.

Two ways to make the call, the same to their callers:

  - the C extension L{goophry_tx.process._cspawn}, built by
    C{pip install -e .} where a C compiler and Python's headers exist: the
    strings are encoded and checked in one C call, and the pipe and the
    spawn are one more, which is most of the Python work per child gone;
  - ctypes, where the extension was not built (or C{GOOPHRY_SPAWN=ctypes}
    asks for it): the same calls, made one by one from Python.

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
from typing import Any, Final, Literal, Protocol

try:
    from goophry_tx.process import _cspawn
except ImportError:
    # Not built: the install found no C compiler or no Python headers.
    C_BUILT = False
else:
    C_BUILT = True

Backend = Literal["C extension", "ctypes"]
C_EXTENSION: Final = "C extension"
CTYPES: Final = "ctypes"

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


def _default_backend() -> Backend | None:
    if C_BUILT and os.environ.get("GOOPHRY_SPAWN") != CTYPES:
        return C_EXTENSION
    if _libc is not None:
        return CTYPES
    return None


#: How L{LibcSpawner} calls C{posix_spawn} unless told: the C extension when
#: it was built, ctypes when not (or when C{GOOPHRY_SPAWN=ctypes} is set), or
#: C{None} when neither can.
BACKEND: Backend | None = _default_backend()


def available() -> bool:
    """Whether libc's posix_spawn can be called here, one way or the other."""
    return BACKEND is not None


def usable(backend: Backend) -> bool:
    """Whether C{backend} can be used here."""
    return C_BUILT if backend == C_EXTENSION else _libc is not None


def _environment(environ: Mapping[Any, Any]) -> list[bytes]:
    """C{environ} as the C{NAME=value} strings of C{envp}."""
    return [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items()]


def _strings(values: Iterable[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """C{values} as a C array of strings ending in C{NULL}, as argv and envp are."""
    items: list[bytes | None] = list(values)
    items.append(None)
    return (ctypes.c_char_p * len(items))(*items)


class _OneSpawn(Protocol):
    """
    One child at a time, from any thread: what the C extension's C{Spawner}
    and L{_CtypesSpawner} both offer.
    """

    def command(
        self,
        executable: str | bytes,
        argv: Sequence[str | bytes],
        envp: Sequence[bytes] | None = None,
    ) -> Any:
        """A child's strings, encoded, or C{ValueError} for a NUL byte in one."""

    def spawn(self, command: Any, /) -> tuple[int, int, int]:
        """Start it: C{(pid, error, fd)} as L{LibcSpawner.spawn} gives them."""


#: A child for L{_CtypesSpawner}: the executable, argv and envp (C{None}
#: for the spawner's).
_CtypesCommand = tuple[
    bytes, "ctypes.Array[ctypes.c_char_p]", "ctypes.Array[ctypes.c_char_p] | None"
]


class _CtypesSpawner:
    """The C extension's C{Spawner}, made of ctypes calls."""

    def __init__(self, default_signals: Sequence[int], stdin_fd: int, envp: list[bytes]) -> None:
        assert _libc is not None
        self._libc = libc = _libc
        self._stdin_fd = stdin_fd
        self._envp = _strings(envp)
        self._attr = ctypes.create_string_buffer(_OPAQUE)
        sigdef = ctypes.create_string_buffer(_OPAQUE)
        empty = ctypes.create_string_buffer(_OPAQUE)
        libc.posix_spawnattr_init(self._attr)
        libc.sigemptyset(sigdef)
        for number in default_signals:
            libc.sigaddset(sigdef, number)
        libc.sigemptyset(empty)
        libc.posix_spawnattr_setsigdefault(self._attr, sigdef)
        libc.posix_spawnattr_setsigmask(self._attr, empty)
        libc.posix_spawnattr_setpgroup(self._attr, 0)
        libc.posix_spawnattr_setflags(self._attr, _SETPGROUP | _SETSIGDEF | _SETSIGMASK)

    def command(
        self,
        executable: str | bytes,
        argv: Sequence[str | bytes],
        envp: Sequence[bytes] | None = None,
    ) -> _CtypesCommand:
        program = os.fsencode(executable)
        args = [os.fsencode(a) for a in argv]
        if any(b"\0" in s for s in (program, *args, *(envp or ()))):
            # C strings would silently end there.
            raise ValueError("embedded null byte")
        return program, _strings(args), None if envp is None else _strings(envp)

    def spawn(self, command: _CtypesCommand, /) -> tuple[int, int, int]:
        executable, argv, envp = command
        libc = self._libc
        try:
            read_fd, out_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            return 0, e.errno or 1, -1
        os.set_blocking(read_fd, False)
        actions = ctypes.create_string_buffer(_OPAQUE)
        pid = ctypes.c_int()
        libc.posix_spawn_file_actions_init(actions)
        libc.posix_spawn_file_actions_adddup2(actions, self._stdin_fd, 0)
        libc.posix_spawn_file_actions_adddup2(actions, out_fd, 1)
        libc.posix_spawn_file_actions_adddup2(actions, out_fd, 2)
        error = libc.posix_spawn(
            ctypes.byref(pid),
            executable,
            actions,
            self._attr,
            argv,
            self._envp if envp is None else envp,
        )
        libc.posix_spawn_file_actions_destroy(actions)
        os.close(out_fd)
        if error:
            os.close(read_fd)
            return 0, error, -1
        return pid.value, 0, read_fd


#: A spawn handed to the threads: the command, and what to call with its result.
_Job = tuple[Any, Callable[[int, int, int], object]]


class LibcSpawner:
    """
    Spawns children from C{threads} threads; each result comes back in the
    caller's thread.

    With the C extension and a C{watch} function, the threads are the
    extension's L{Pool<goophry_tx.process._cspawn.Pool>}, which never takes
    the GIL, and results are collected when its descriptor is readable.
    Otherwise they are Python threads, and results come back through
    C{deliver} (the reactor's C{callFromThread}).

    @ivar backend: how C{posix_spawn} is called, L{C_EXTENSION} or L{CTYPES}.
    @ivar pooled: whether the threads are the extension's, outside the GIL.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        default_signals: Sequence[int],
        stdin_fd: int,
        deliver: Callable[..., object],
        threads: int = 2,
        backend: Backend | None = None,
        watch: Callable[[int, Callable[[], None]], object] | None = None,
    ) -> None:
        """
        @param environ: the children's environment, encoded once here.
        @param default_signals: signals reset to their default in the child.
        @param stdin_fd: the descriptor the children read as stdin.
        @param deliver: runs a callable in the caller's thread.
        @param threads: how many spawning threads to start.
        @param backend: how to call C{posix_spawn}; L{BACKEND} by default.
        @param watch: C{watch(fd, on_readable)} has the caller's thread call
            C{on_readable} whenever C{fd} is readable (the reactor's
            reader); given, the C extension spawns from its own threads.
        """
        chosen = backend or BACKEND
        envp = _environment(environ)
        if chosen is None or not usable(chosen):
            raise ValueError(f"posix_spawn cannot be called through {chosen or 'libc'} here")
        self._one: _OneSpawn
        if chosen == C_EXTENSION:
            self._one = spawner = _cspawn.Spawner(default_signals, stdin_fd, envp)
        else:
            self._one = _CtypesSpawner(default_signals, stdin_fd, envp)
        self.backend: Backend = chosen
        self._pool: _cspawn.Pool | None = None
        self.pooled = chosen == C_EXTENSION and watch is not None
        if self.pooled:
            assert watch is not None
            self._pool = _cspawn.Pool(spawner, threads)
            watch(self._pool.fileno(), self._collect)
            threads = 0
        self._deliver = deliver
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        # Results wait here; the caller's thread is woken once per batch.
        self._results: collections.deque[tuple[Callable[..., object], int, int, int]]
        self._results = collections.deque()
        self._wake_pending = False
        # Spawns handed to the threads whose results are not handed back
        # yet; only the caller's thread counts them.
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"goophry-spawn-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def command(
        self,
        executable: str | bytes,
        argv: Sequence[str | bytes],
        env: Mapping[Any, Any] | None = None,
    ) -> Any:
        """
        One child's executable, argv and environment (C{None} for the one
        given at construction), encoded for L{spawn}.

        @raise ValueError: a string holds a NUL byte, which would silently
            end it in C; raised here, in the caller's thread, before
            anything is started.
        """
        return self._one.command(executable, argv, None if env is None else _environment(env))

    def spawn(
        self, command: Any, done: Callable[[int, int, int], object], inline: bool = False
    ) -> None:
        """
        Start C{command} (from L{command}) with stdout and stderr on a new
        pipe, and call C{done(pid, error, fd)}: error 0 or an errno, fd the
        pipe's reading end (non-blocking), or -1 on error.  With C{inline}
        (the caller is idle) and no spawn under way, this one is made at
        once, in the caller's thread, which starts it soonest; otherwise it
        is handed to the threads, and C{done} comes later.
        """
        if inline and not self._busy:
            done(*self._one.spawn(command))
            return
        self._busy += 1
        if self._pool is not None:
            self._pool.submit(command, done)
        else:
            self._jobs.put((command, done))

    def _collect(self) -> None:
        """In the caller's thread: pass on every result the pool has."""
        assert self._pool is not None
        for done, pid, error, fd in self._pool.collect():
            self._busy -= 1
            done(pid, error, fd)

    def _work(self) -> None:
        """A spawning thread: spawn each job until C{None} comes."""
        one = self._one
        while True:
            job = self._jobs.get()
            if job is None:
                return
            command, done = job
            result = one.spawn(command)
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
        if self._pool is not None:
            self._pool.close()
        for _ in self._threads:
            self._jobs.put(None)
