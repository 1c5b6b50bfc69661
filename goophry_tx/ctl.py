"""
C{goophry-ctl [-c CONFIG] [--json] COMMAND ...}: the operators' tool.

It reads the daemon's configuration for the Redis connection, the key
prefix and the task types, runs one of the L{goophry_tx.operations} on the
reactor and prints an aligned table, or with C{--json} one JSON document.
Exit status: 0 done, 1 the operation failed (Redis unreachable, an entry
not found or changed), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from goophry_tx import operations, startup
from goophry_tx.config import Config, ConfigError, check_config, load_config
from goophry_tx.connect import connection_check, describe, redis_endpoint
from goophry_tx.keys import Keys
from goophry_tx.operations import EntryRef, OperationError
from goophry_tx.redis import ConnectionError, RedisHealth, RedisLink, ResponseError

OK, FAILED, USAGE = 0, 1, 2

#: Longest cell of a table column that holds free text.
CELL = 60

#: Seconds to connect and be ready (AUTH, SELECT): a Redis that accepts
#: connections but does not answer ends the command too.
CONNECT_TIMEOUT = 5.0


class Refused(Exception):
    """A usage error found after parsing: exit status 2, with this message."""


# The command line


def _index(text: str) -> EntryRef:
    try:
        return EntryRef.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number 0 or more, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or not int(text):
        raise argparse.ArgumentTypeError(f"expected a number 1 or more, got {text!r}")
    return int(text)


#: Seconds in each unit of a C{--in} duration.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """C{--in}: seconds, or a number with a unit, as C{30s}, C{5m}, C{2h}, C{1d}."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s, 5m, 2h or 1d, got {text!r}"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration 0 or more, got {text!r}")
    return seconds


def _moment(text: str) -> float:
    """C{--at}: unix seconds, or an ISO 8601 time (local time unless it has an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected unix seconds or a time such as 2026-12-24T18:00, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; C{--help} lists them all."""
    # -c and --json are read before the command or after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help="the daemon's configuration file"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument(
        "--force", action="store_true", help="accept a type the configuration does not name"
    )

    parser = argparse.ArgumentParser(
        prog="goophry-ctl",
        description="See and steer the queues of every Goophry daemon on one Redis.",
        epilog="Exit status: 0 done, 1 the operation failed, 2 a usage or configuration error.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default="goophry.config.json",
        help="the daemon's configuration file (default: goophry.config.json)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any, name: str, text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=text, description=text, parents=[common, *parents]
        )
        return sub

    command(commands, "stats", "per type: queued, in flight, failed, paused; live instances")

    push = command(commands, "push", "push a task, as a producer would", force)
    when = push.add_mutually_exclusive_group()
    when.add_argument(
        "--in", dest="delay", type=_duration, help="run it after this long (30s, 5m, 2h, 1d)"
    )
    when.add_argument(
        "--at", dest="at", type=_moment, help="run it at this time (ISO 8601, or unix seconds)"
    )
    push.add_argument("type", metavar="TYPE")
    push.add_argument("args", metavar="ARG", nargs="*", help="the task's arguments")

    scheduled = command(commands, "scheduled", "entries due later: ls, rm")
    scheduled_actions = scheduled.add_subparsers(dest="action", metavar="ACTION", required=True)
    scheduled_ls = command(scheduled_actions, "ls", "list scheduled entries, soonest first", force)
    scheduled_ls.add_argument("type", metavar="TYPE")
    scheduled_rm = command(scheduled_actions, "rm", "remove a scheduled entry", force)
    scheduled_rm.add_argument("type", metavar="TYPE")
    scheduled_rm.add_argument(
        "index",
        metavar="INDEX",
        type=_index,
        help="as scheduled ls shows it; INDEX@ID acts only if the entry is still that one",
    )

    failed = command(commands, "failed", "failed entries: ls, show, retry, purge")
    actions = failed.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = command(actions, "ls", "list failed entries, oldest first", force)
    ls.add_argument("type", metavar="TYPE")
    ls.add_argument("--limit", type=_positive, default=100, help="at most N entries (100)")
    ls.add_argument("--offset", type=_count, default=0, help="from index N (0)")
    show = command(actions, "show", "one failed entry, its ErrorMessage in full", force)
    show.add_argument("type", metavar="TYPE")
    show.add_argument("index", metavar="INDEX", type=_count)
    for name, text in (
        ("retry", "move failed entries back to the tail of their queue, as pushed"),
        ("purge", "delete failed entries"),
    ):
        sub = command(actions, name, text, force)
        sub.add_argument("type", metavar="TYPE")
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", help="every entry of the list")
        which.add_argument(
            "indices",
            metavar="INDEX",
            nargs="*",
            type=_index,
            default=[],
            help="as failed ls shows it; INDEX@ID acts only if the entry is still that one",
        )
        if name == "purge":
            sub.add_argument("--yes", action="store_true", help="do not ask before purging --all")

    inflight = command(commands, "inflight", "entries taken and not finished")
    inflight_actions = inflight.add_subparsers(dest="action", metavar="ACTION", required=True)
    inflight_ls = command(
        inflight_actions, "ls", "what each instance has taken and not finished", force
    )
    inflight_ls.add_argument("type", metavar="TYPE", nargs="?")

    command(commands, "instances", "every registered instance, alive or dead")
    for name, text in (
        ("pause", "stop every daemon taking entries of a type"),
        ("resume", "let daemons take entries of a type again"),
    ):
        command(commands, name, text, force).add_argument("type", metavar="TYPE")
    command(commands, "check", "check the configuration as the daemon would, without Redis")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (or exits with) the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        return _check(args.config, args.json)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return _error(str(e), USAGE)
    try:
        _refuse(config, args)
    except Refused as e:
        return _error(str(e), USAGE)
    if args.command == "failed" and args.action == "purge" and args.all and not args.yes:
        if not _confirmed(Keys(config.redis_queue_key).failed(args.type)):
            return _error("nothing purged", FAILED)
    _run(config, args)


def _error(message: str, status: int) -> int:
    print(f"goophry-ctl: {message}", file=sys.stderr)
    return status


def _refuse(config: Config, args: argparse.Namespace) -> None:
    """Usage errors that need the configuration to be seen."""
    types = [t.type for t in config.tasks]
    task_type = getattr(args, "type", None)
    if task_type is not None and task_type not in types and not args.force:
        raise Refused(
            f"unknown task type {task_type!r} (the configuration names {', '.join(types)}); "
            "--force to use it anyway"
        )
    for index, arg in enumerate(getattr(args, "args", None) or ()):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(f"ARG {index + 1} is not valid UTF-8") from None
    if args.command == "failed" and args.action == "purge" and args.all and not args.yes:
        if not sys.stdin.isatty():
            raise Refused("failed purge --all needs --yes when not run from a terminal")


def _confirmed(key: str) -> bool:
    print(f"Delete every entry of {key}? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _check(path: str, as_json: bool) -> int:
    """The daemon's own check (L{startup.check}), its lines said by C{goophry-ctl}."""
    if not as_json:
        return startup.check(path, program="goophry-ctl")
    try:
        config = check_config(path)
    except ConfigError as e:
        return _error(str(e), USAGE)
    types = [{"type": t.type, "script": t.script, "workers": t.workers} for t in config.tasks]
    _print_json(
        {"config": config.path, "ok": True, "types": types, "warnings": list(config.warnings)}
    )
    return OK


# Running on the reactor


class FirstAttempt(RedisHealth):
    """
    Reachability for a one-shot command: the first attempt to connect
    decides, instead of waiting out an outage as the daemon does.
    """

    def __init__(self, clock: IReactorTime, address: str) -> None:
        super().__init__(clock, address)
        #: Fires once connected, or fails with why it could not be.
        self.ready: Deferred[None] = Deferred()

    def up(self, link: str) -> None:
        if not self.ready.called:
            self.ready.callback(None)

    def down(self, link: str, reason: str) -> None:
        if not self.ready.called:
            self.ready.errback(ConnectionError(reason))


def _run(config: Config, args: argparse.Namespace) -> NoReturn:
    from twisted.internet.task import react

    def session(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(_session(reactor, config, args))

        def exit_with(status: int) -> None:
            if status != OK:
                raise SystemExit(status)

        def crashed(failure: Failure) -> None:
            # A bug, not an operation that failed: show all of it (react
            # would log it, and nothing here observes the log).
            print(failure.getTraceback(), file=sys.stderr)
            raise SystemExit(FAILED)

        return d.addCallbacks(exit_with, crashed)

    react(session)


async def _session(reactor: Any, config: Config, args: argparse.Namespace) -> int:
    health = FirstAttempt(reactor, describe(config))
    # The daemon's own way to Redis: unix, TCP, verified TLS, or the
    # sentinels' master.
    endpoint = redis_endpoint(reactor, config)
    link = RedisLink(
        reactor,
        endpoint,
        health,
        check=connection_check(endpoint),
        name="goophry-ctl",
        password=config.redis_password,
        username=config.redis_username,
        db=config.redis_db,
        client_name="goophry-ctl",
    )
    link.startService()
    try:
        try:
            await health.ready.addTimeout(CONNECT_TIMEOUT, reactor)
        except ConnectionError as e:
            return _error(f"cannot reach Redis at {describe(config)}: {e}", FAILED)
        except defer.TimeoutError:
            return _error(
                f"cannot reach Redis at {describe(config)}: no answer within {CONNECT_TIMEOUT:g}s",
                FAILED,
            )
        return await _command(link, Keys(config.redis_queue_key), config, args)
    except ConnectionError as e:
        return _error(f"lost the connection to Redis at {config.redis_address}: {e}", FAILED)
    except ResponseError as e:
        return _error(f"Redis refused: {e}", FAILED)
    except OperationError as e:
        return _error(str(e), FAILED)
    finally:
        await link.stopService()


async def _command(link: RedisLink, keys: Keys, config: Config, args: argparse.Namespace) -> int:
    command = (
        args.command
        if args.command not in ("failed", "inflight", "scheduled")
        else (f"{args.command} {args.action}")
    )
    as_json: bool = args.json
    if command == "stats":
        overview = await operations.stats(link, keys, [t.type for t in config.tasks])
        return _show(as_json, overview.as_json(), lambda: _stats_text(overview))
    if command == "push" and (args.delay is not None or args.at is not None):
        due = args.at if args.at is not None else time.time() + args.delay
        added = await operations.schedule(link, keys, args.type, args.args, due)
        return _show(
            as_json,
            added.as_json(),
            lambda: print(
                f"scheduled in {keys.scheduled(added.type)} for {_when(added.due)}: "
                f"{added.entry.decode('utf-8')}"
            ),
        )
    if command == "push":
        pushed = await operations.push(link, keys, args.type, args.args)
        return _show(
            as_json,
            pushed.as_json(),
            lambda: print(
                f"pushed to {keys.queue(pushed.type)} ({pushed.length} queued): "
                f"{pushed.entry.decode('utf-8')}"
            ),
        )
    if command == "failed ls":
        page = await operations.failed_list(link, keys, args.type, args.offset, args.limit)
        return _show(as_json, page.as_json(), lambda: _failed_text(page))
    if command == "failed show":
        entry = await operations.failed_entry(link, keys, args.type, args.index)
        return _show(as_json, entry.as_json(), lambda: _entry_text(entry))
    if command in ("failed retry", "failed purge"):
        refs = None if args.all else args.indices
        if args.action == "retry":
            moved = await operations.failed_retry(link, keys, args.type, refs)
        else:
            moved = await operations.failed_purge(link, keys, args.type, refs)
        _show(as_json, moved.as_json(), lambda: _moved_text(moved, keys, args.action))
        for skipped in moved.skipped:
            print(
                f"goophry-ctl: entry {skipped.index} left alone: {skipped.reason}", file=sys.stderr
            )
        # With --all, entries that cannot be retried are expected; named ones are not.
        return FAILED if moved.skipped and refs is not None else OK
    if command == "scheduled ls":
        waiting = await operations.scheduled_list(link, keys, args.type)
        return _show(
            as_json,
            {"type": args.type, "entries": [e.as_json() for e in waiting]},
            lambda: _scheduled_text(keys.scheduled(args.type), waiting),
        )
    if command == "scheduled rm":
        removed = await operations.scheduled_remove(link, keys, args.type, args.index)
        return _show(
            as_json,
            {"type": args.type, "removed": removed.decode("utf-8", "backslashreplace")},
            lambda: print(
                f"removed from {keys.scheduled(args.type)}: "
                f"{removed.decode('utf-8', 'backslashreplace')}"
            ),
        )
    if command == "inflight ls":
        entries = await operations.inflight(link, keys, args.type)
        return _show(
            as_json, {"entries": [e.as_json() for e in entries]}, lambda: _inflight_text(entries)
        )
    if command == "instances":
        found = await operations.instances(link, keys)
        return _show(
            as_json, {"instances": [i.as_json() for i in found]}, lambda: _instances_text(found)
        )
    if command in ("pause", "resume"):
        change = await (operations.pause if command == "pause" else operations.resume)(
            link, keys, args.type
        )
        return _show(as_json, change.as_json(), lambda: _pause_text(change))
    raise AssertionError(f"no such command: {command}")


# Output


def _print_json(document: object) -> None:
    print(json.dumps(document, ensure_ascii=False, indent=2))


def _show(as_json: bool, document: object, text: Callable[[], None]) -> int:
    if as_json:
        _print_json(document)
    else:
        text()
    return OK


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _cut(text: str, width: int = CELL) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned, numbers to the right; C{-} for a missing value."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def _args_text(args: list[Any] | None) -> str:
    return _cut(json.dumps(args, ensure_ascii=False)) if args is not None else "-"


def _stats_text(overview: operations.Overview) -> None:
    rows = [
        [name, f.queued, f.inflight, f.failed, f.scheduled, "yes" if f.paused else "no"]
        for name, f in overview.types.items()
    ]
    print(table(["TYPE", "QUEUED", "INFLIGHT", "FAILED", "SCHEDULED", "PAUSED"], rows))
    print(f"instances: {overview.alive} alive, {overview.dead} dead")


def _failed_text(page: operations.FailedPage) -> None:
    rows = []
    for e in page.entries:
        if e.fields is None:
            error, args = f"(not a failed-task record: {e.problem})", _cut(repr(e.raw))
        elif e.invalid:
            error = e.error_message.split("\n", 1)[0]
            args = _cut(f"Payload {json.dumps(e.fields.get('Payload'), ensure_ascii=False)}")
        else:
            error, args = e.error_message.split("\n", 1)[0], _args_text(e.args)
        rows.append([e.index, e.id, _when(e.failed_at), e.instance, _cut(error), args])
    first = page.entries[0].index if page.entries else 0
    print(f"{page.key}: {_entries(page.total)}", end="")
    if len(page.entries) < page.total:
        shown = f"{first}-{first + len(page.entries) - 1}" if page.entries else "none"
        print(f" (showing {shown}; --offset and --limit for the others)", end="")
    print()
    if rows:
        print(table(["INDEX", "ID", "FAILED AT", "INSTANCE", "ERROR", "ARGS"], rows))


def _entry_text(entry: operations.FailedEntry) -> None:
    print(f"index: {entry.index}")
    print(f"id: {entry.id}")
    if entry.fields is None:
        print(f"problem: not a failed-task record ({entry.problem})")
        print(f"raw: {entry.raw!r}")
        return
    for name, value in entry.fields.items():
        if name == "ErrorMessage":
            continue
        shown = json.dumps(value, ensure_ascii=False)
        if name == "FailedAt" and entry.failed_at is not None:
            shown += f" ({_when(entry.failed_at)})"
        print(f"{name}: {shown}")
    print("ErrorMessage:")
    for line in entry.error_message.split("\n"):
        print(f"    {line}")


def _moved_text(moved: operations.Moved, keys: Keys, action: str) -> None:
    done = ", ".join(str(i) for i in moved.done) or "none"
    if action == "retry":
        print(
            f"retried {_entries(len(moved.done))} of {keys.failed(moved.type)} "
            f"to the tail of {keys.queue(moved.type)}: {done}"
        )
    else:
        print(f"purged {_entries(len(moved.done))} of {keys.failed(moved.type)}: {done}")


def _scheduled_text(key: str, entries: list[operations.ScheduledEntry]) -> None:
    print(f"{key}: {_entries(len(entries))}")
    if not entries:
        return
    rows = [
        [
            e.index,
            e.id,
            _when(e.due),
            e.attempt,
            _args_text(e.args) if e.args is not None else _cut(repr(e.raw)),
        ]
        for e in entries
    ]
    print(table(["INDEX", "ID", "DUE", "ATTEMPT", "ARGS"], rows))


def _inflight_text(entries: list[operations.InflightEntry]) -> None:
    if not entries:
        print("nothing in flight")
        return
    rows = [
        [
            e.instance,
            "alive" if e.alive else "dead",
            e.type,
            e.position,
            e.recoveries,
            _args_text(e.args) if e.args is not None else _cut(repr(e.raw)),
        ]
        for e in entries
    ]
    print(table(["INSTANCE", "STATE", "TYPE", "POSITION", "RECOVERIES", "ARGS"], rows))


def _instances_text(found: list[operations.Instance]) -> None:
    if not found:
        print("no instance registered")
        return
    rows = [
        [
            i.name,
            i.host,
            i.pid,
            _when(i.started),
            "alive" if i.alive else "dead",
            ",".join(i.types),
            i.inflight,
        ]
        for i in found
    ]
    print(table(["NAME", "HOST", "PID", "STARTED", "STATE", "TYPES", "INFLIGHT"], rows))


def _pause_text(change: operations.PauseChange) -> None:
    if change.paused:
        if change.changed:
            print(
                f"{change.type} paused: daemons stop taking its entries within a second; "
                "running ones finish"
            )
        else:
            print(f"{change.type} was already paused")
    elif change.changed:
        print(f"{change.type} resumed: daemons take its entries again within a second")
    else:
        print(f"{change.type} was not paused")


if __name__ == "__main__":
    sys.exit(main())
