"""
Reloading the configuration on SIGHUP.

L{compare} decides, from the running configuration and the file read again,
what applies live and what needs a restart; L{read_again} reads and checks
the file as a start does and logs what a reload will change; the daemon's
service applies the L{ConfigChange} to its parts.  Settings that a running
daemon cannot change (the Redis connection, the key prefix, the stats
server, the log) are named in the log as needing a restart, and kept.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import attrs
from twisted.logger import Logger

from goophry_tx.config import Config, ConfigError, TaskType, load_config, setting_name
from goophry_tx.startup import config_error_text, log_warnings

log = Logger()

#: The settings applied live, as L{Config} attributes: each is read where it
#: is used, at the next run, failure or stop.  The types (C{Tasks}) are
#: compared one by one.
LIVE = (
    "error_script",
    "error_script_timeout",
    "error_queue_size",
    "failed_tasks_ttl",
    "output_limit",
    "kill_grace",
    "shutdown_timeout",
)

#: A type's settings applied live, to the entries it takes next.
LIVE_TASK = ("script", "workers", "timeout")

#: L{Config} attributes that are not settings compared one by one.
_NOT_SETTINGS = ("path", "tasks", "warnings")


@attrs.frozen
class ConfigChange:
    """What a configuration read again changes in the running one."""

    #: The configuration to run on: the live settings of the file read
    #: again, the running values of the settings that need a restart.
    config: Config
    #: The types to start taking.
    added: tuple[TaskType, ...] = ()
    #: The types to stop taking; their running scripts finish.
    removed: tuple[str, ...] = ()
    #: The types kept whose script, workers or timeout changed, as they are now.
    changed: tuple[TaskType, ...] = ()
    #: What is applied, one phrase each, for the log.
    applied: tuple[str, ...] = ()
    #: The settings that changed but need a restart, by their names in the file.
    restart: tuple[str, ...] = ()


def _shown(value: object) -> str:
    """A setting's value in the log line of a reload."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _differences(
    running: Config | TaskType, new: Config | TaskType, names: tuple[str, ...], what: str = ""
) -> tuple[list[str], list[str]]:
    """
    The settings that differ between two configurations, or two versions of
    a type: as phrases for those in C{names} (applied live), as setting
    names for the others (needing a restart).

    @param what: said after the setting's name, as in C{Workers of mail}.
    """
    applied, restart = [], []
    for field in attrs.fields(type(running)):
        old, now = getattr(running, field.name), getattr(new, field.name)
        if field.name in _NOT_SETTINGS or old == now:
            continue
        name = setting_name(field.name) + what
        if field.name in names:
            applied.append(f"{name} {_shown(old)} -> {_shown(now)}")
        else:
            restart.append(name)
    return applied, restart


def compare(running: Config, new: Config) -> ConfigChange:
    """
    Decide what C{new} changes in the C{running} configuration: which
    types to add and remove, which to change, which settings apply live and
    which need a restart.
    """
    before = {t.type: t for t in running.tasks}
    after = {t.type: t for t in new.tasks}
    applied, restart = _differences(running, new, LIVE)
    tasks, added, changed = [], [], []
    for task_type in new.tasks:
        old = before.get(task_type.type)
        if old is None:
            added.append(task_type)
            tasks.append(task_type)
            applied.append(f"type {task_type.type} added ({task_type.workers} workers)")
            continue
        # A type's other settings keep their running values.
        kept = attrs.evolve(old, **{name: getattr(task_type, name) for name in LIVE_TASK})
        tasks.append(kept)
        now, later = _differences(old, task_type, LIVE_TASK, f" of {task_type.type}")
        applied.extend(now)
        restart.extend(later)
        if kept != old:
            changed.append(kept)
    removed = tuple(t.type for t in running.tasks if t.type not in after)
    applied.extend(f"type {name} removed (its running scripts finish)" for name in removed)
    config = attrs.evolve(
        running,
        tasks=tuple(tasks),
        warnings=new.warnings,
        **{name: getattr(new, name) for name in LIVE},
    )
    return ConfigChange(
        config=config,
        added=tuple(added),
        removed=removed,
        changed=tuple(changed),
        applied=tuple(applied),
        restart=tuple(restart),
    )


def read_again(running: Config, load: Callable[[str], Config] = load_config) -> ConfigChange | None:
    """
    Read and check the configuration file again, as a start does, and log
    what a reload changes: one line for what is applied, one for the
    settings that need a restart.

    The log file is not checked again, as L{goophry_tx.config.check_config}
    would: a reload does not reopen it.

    @param load: reads the file (by default L{load_config}).
    @return: the change to apply, or C{None} when the file is refused
        (logged with the message a start would print).
    """
    try:
        new = load(running.path)
    except ConfigError as e:
        log.error(
            "{error}; not reloaded: running on with the configuration as it was",
            error=config_error_text(e),
        )
        return None
    log_warnings(new)
    change = compare(running, new)
    log.info(
        "configuration reloaded from {path}: {changes}",
        path=running.path,
        changes="; ".join(change.applied) or "nothing changed",
    )
    if change.restart:
        log.warn(
            "{path}: changing {settings} needs a restart; running on with the values "
            "it started with",
            path=running.path,
            settings=", ".join(change.restart),
        )
    return change


def reload_on_sighup(reactor: Any, reload: Callable[[], None]) -> None:
    """
    Call C{reload} in the reactor's thread on each SIGHUP, from the time
    the reactor runs.  Neither twistd nor the reactor handles SIGHUP: left
    alone, it would end the daemon.

    @param reactor: an L{IReactorCore<twisted.internet.interfaces.IReactorCore>}
        that is also an
        L{IReactorThreads<twisted.internet.interfaces.IReactorThreads>}.
    """

    def handler(number: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes of the
        # reactor's thread: callFromThread is what is safe there.
        reactor.callFromThread(reload)

    reactor.callWhenRunning(signal.signal, signal.SIGHUP, handler)
