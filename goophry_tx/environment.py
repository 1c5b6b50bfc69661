"""
The environment an entry asks for: C{"Env": {"NAME": "value"}}.

A type applies only the names its C{AllowedEnv} lists; dynamic-loader
variables are never allowed, whatever the config says, since they would
let a producer run code of its choosing inside any script.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from goophry_tx.config import TaskType, env_name, loader_variable
from goophry_tx.task import InvalidEntry, Task


class EntryEnvironment:
    """Checks the Env of one type's entries against its C{AllowedEnv}."""

    log = Logger()

    def __init__(self, task_type: TaskType) -> None:
        self._type = task_type.type
        self._allowed = frozenset(task_type.allowed_env)
        self._told_ignored = False

    def of(self, task: Task) -> Mapping[str, str] | InvalidEntry | None:
        """
        The variables to add for C{task}: None for none, or the reason it
        is an invalid entry.
        """
        env = task.env
        if env is None:
            return None
        if not self._allowed:
            # As the original ignores fields it does not know; said once.
            if not self._told_ignored:
                self._told_ignored = True
                self.log.warn(
                    "{type} entries carry Env, which is ignored: the type has no AllowedEnv",
                    type=self._type,
                )
            return None

        def invalid(reason: str) -> InvalidEntry:
            return InvalidEntry(task.type, task.payload, f"invalid task entry: Env: {reason}")

        if not isinstance(env, dict):
            return invalid("expected an object of strings")
        for name, value in env.items():
            if not env_name(name):
                return invalid(f"{name!r} is not a valid environment variable name")
            if name not in self._allowed:
                why = " (a dynamic-loader variable)" if loader_variable(name) else ""
                return invalid(f"{name} is not in the AllowedEnv of type {self._type}{why}")
            if not isinstance(value, str) or "\0" in value:
                return invalid(f"{name}: expected a string without NUL bytes")
        return env or None
