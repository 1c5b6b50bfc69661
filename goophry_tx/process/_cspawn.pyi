"""The types of the C extension built from _cspawn.c (see the comment at its top)."""

from collections.abc import Sequence
from typing import Any, final

@final
class Command:
    """One child's executable, argv and environment, encoded."""

@final
class Spawner:
    """posix_spawn set up once: attributes, stdin and environment."""

    def __init__(
        self, default_signals: Sequence[int], stdin_fd: int, envp: Sequence[bytes]
    ) -> None: ...
    def command(
        self,
        executable: str | bytes,
        argv: Sequence[str | bytes],
        envp: Sequence[bytes] | None = None,
    ) -> Command: ...
    def spawn(self, command: Command, /) -> tuple[int, int, int]: ...

@final
class Pool:
    """Spawning threads of the extension's own, that never take the GIL."""

    def __init__(self, spawner: Spawner, threads: int) -> None: ...
    def submit(self, command: Command, token: object, /) -> None: ...
    def collect(self) -> list[tuple[Any, int, int, int]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
