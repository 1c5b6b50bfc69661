"""
What operators do to the queues of every daemon on one Redis: look at
them, push, retry or purge failed entries, pause and resume a type.

Each operation is a function of a Redis link and the L{Keys} that returns
a L{Deferred} firing with plain data (attrs classes, each with an
C{as_json}), so that the command line (L{goophry_tx.ctl}) and the web
dashboard show the same things.  They read only the keys the daemons
write, so they see every instance, not only one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults

from goophry_tx.keys import Keys
from goophry_tx.recovery import machine_identity
from goophry_tx.redis import IRedisLink
from goophry_tx.schedule import ID_FIELD, scheduled_payload
from goophry_tx.stats import queue_figures
from goophry_tx.task import ATTEMPT_FIELD

P = ParamSpec("P")
T = TypeVar("T")

#: Fields a daemon adds to an entry; a retried entry goes back without
#: them, in the form its producer pushed.  L{ID_FIELD} marks the copies of
#: a scheduled entry.
DAEMON_FIELDS = (
    "ErrorMessage",
    "FailedAt",
    "Instance",
    "Attempts",
    "GoophryRecoveries",
    ATTEMPT_FIELD,
    ID_FIELD,
)

#: Entries moved by one script call: a long C{--all} never blocks Redis for long.
CHUNK = 100

# KEYS: the failed list, the queue.  ARGV: a marker no entry equals, then
# for each entry its index, the entry expected there, and what to push to
# the queue ('' for nothing), by ascending index.  An entry leaves the
# failed list only if it is still the one expected at its index, and only
# together with its push.  Replies 1 (moved) or 0 (changed) for each.
MOVE_SCRIPT = """
local marker = ARGV[1]
local result, moved = {}, 0
for i = 2, #ARGV, 3 do
  local index = tonumber(ARGV[i])
  if redis.call('LINDEX', KEYS[1], index) == ARGV[i + 1] then
    redis.call('LSET', KEYS[1], index, marker)
    if ARGV[i + 2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[i + 2]) end
    result[#result + 1] = 1
    moved = moved + 1
  else
    result[#result + 1] = 0
  end
end
if moved > 0 then redis.call('LREM', KEYS[1], 0, marker) end
return result
"""


class OperationError(Exception):
    """The operation cannot be done; the message says why, in one line."""


def _deferred(
    f: Callable[P, Coroutine[Deferred[Any], Any, T]],
) -> Callable[P, Deferred[T]]:
    """Let a coroutine function be called as one that returns a L{Deferred}."""

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


async def _each(link: IRedisLink, commands: Iterable[Sequence[str | bytes | int]]) -> list[Any]:
    """Send the commands at once (one round trip) and gather their replies."""
    try:
        return await gatherResults(
            [link.execute(*command) for command in commands], consumeErrors=True
        )
    except FirstError as e:
        e.subFailure.raiseException()
        raise


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def entry_id(raw: bytes) -> str:
    """
    A short fingerprint of a stored entry: shown beside its index, it lets
    a later command check that the index still holds that entry.
    """
    return hashlib.sha1(raw).hexdigest()[:8]


# Instances


def _started_at(record: dict[str, Any]) -> float | None:
    """
    When an instance started, in unix seconds: its record's C{started}, or
    else its kernel start time, readable only on the machine and boot it
    was taken on.
    """
    started = record.get("started")
    if isinstance(started, int | float):
        return float(started)
    ticks = record.get("start")
    if not isinstance(ticks, str) or not ticks.isdigit():
        return None
    if (record.get("boot", ""), record.get("pidns", "")) != machine_identity():
        return None
    try:
        with open("/proc/stat") as f:
            boot_time = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot_time + int(ticks) / os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Instance:
    """A registered daemon instance, alive while its heartbeat key exists."""

    name: str
    host: str
    pid: int | None
    started: float | None
    alive: bool
    types: tuple[str, ...]
    inflight: int

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.frozen
class _Registered:
    name: str
    record: dict[str, Any]
    alive: bool

    @property
    def types(self) -> tuple[str, ...]:
        types = self.record.get("types")
        if not isinstance(types, list):
            return ()
        return tuple(t for t in types if isinstance(t, str))


async def _registered(link: IRedisLink, keys: Keys) -> list[_Registered]:
    flat = await link.execute("HGETALL", keys.instances)
    names = [_text(name) for name in flat[::2]]
    records = []
    for raw in flat[1::2]:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {})
    alive = await _each(link, [("EXISTS", keys.heartbeat(name)) for name in names])
    return [
        _Registered(name, record, bool(exists))
        for name, record, exists in zip(names, records, alive, strict=True)
    ]


@_deferred
async def instances(link: IRedisLink, keys: Keys) -> list[Instance]:
    """Every registered instance, with how many entries it has in flight."""
    registered = await _registered(link, keys)
    pairs = [(r, t) for r in registered for t in r.types]
    lengths = await _each(link, [("LLEN", keys.inflight(t, r.name)) for r, t in pairs])
    inflight: dict[str, int] = {}
    for (r, _), length in zip(pairs, lengths, strict=True):
        inflight[r.name] = inflight.get(r.name, 0) + int(length)
    result = []
    for r in registered:
        pid = r.record.get("pid")
        result.append(
            Instance(
                name=r.name,
                host=str(r.record.get("host", "")),
                pid=pid if isinstance(pid, int) else None,
                started=_started_at(r.record),
                alive=r.alive,
                types=r.types,
                inflight=inflight.get(r.name, 0),
            )
        )
    return sorted(result, key=lambda i: (not i.alive, i.name))


# Stats


@attrs.frozen
class TypeStats:
    """How many entries of one type wait, run, failed, wait till later; whether it is paused."""

    queued: int
    inflight: int
    failed: int
    paused: bool
    scheduled: int

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.frozen
class Overview:
    """Every type's figures, and how many registered instances live."""

    types: dict[str, TypeStats]
    alive: int
    dead: int

    def as_json(self) -> dict[str, object]:
        return {
            "types": {name: figures.as_json() for name, figures in self.types.items()},
            "instances": {"alive": self.alive, "dead": self.dead},
        }


@_deferred
async def stats(link: IRedisLink, keys: Keys, types: Sequence[str]) -> Overview:
    """
    Per type: queued, in flight (summed over every registered instance),
    failed, paused, scheduled; and the number of live and dead instances.
    """
    registered = await _registered(link, keys)
    # The queue figures as the metrics read them (one MULTI), then the paused types.
    queues = await queue_figures(link, keys, types, [r.name for r in registered])
    paused = {_text(name) for name in await link.execute("SMEMBERS", keys.paused)}
    figures = {
        t: TypeStats(f.queued, f.inflight, f.failed, t in paused, f.scheduled)
        for t, f in queues.items()
    }
    alive = sum(r.alive for r in registered)
    return Overview(figures, alive, len(registered) - alive)


# Pushing, pausing


def producer_entry(args: Sequence[str]) -> bytes:
    """An entry as a producer pushes it: C{{"Args":[...]}}."""
    return json.dumps({"Args": list(args)}, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


@attrs.frozen
class Pushed:
    """An entry pushed to the tail of a queue, now C{length} long."""

    type: str
    entry: bytes
    length: int

    def as_json(self) -> dict[str, object]:
        return {"type": self.type, "entry": json.loads(self.entry), "queued": self.length}


@_deferred
async def push(link: IRedisLink, keys: Keys, task_type: str, args: Sequence[str]) -> Pushed:
    """C{RPUSH} a task with these arguments, as a producer would."""
    entry = producer_entry(args)
    length = await link.execute("RPUSH", keys.queue(task_type), entry)
    return Pushed(task_type, entry, int(length))


@attrs.frozen
class Scheduled:
    """An entry added to a type's scheduled set, due at C{due}."""

    type: str
    entry: bytes
    due: float

    def as_json(self) -> dict[str, object]:
        return {"type": self.type, "entry": json.loads(self.entry), "due": self.due}


@_deferred
async def schedule(
    link: IRedisLink, keys: Keys, task_type: str, args: Sequence[str], due: float
) -> Scheduled:
    """
    C{ZADD} a task with these arguments to the type's scheduled set, due
    at C{due} (unix seconds), with an id field of its own: the same task
    scheduled twice runs twice.
    """
    entry = scheduled_payload({"Args": list(args)})
    await link.execute("ZADD", keys.scheduled(task_type), repr(due), entry)
    return Scheduled(task_type, entry, due)


@attrs.frozen
class PauseChange:
    """Whether a type is paused now, and whether this call changed it."""

    type: str
    paused: bool
    changed: bool

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


async def _set_paused(link: IRedisLink, keys: Keys, task_type: str, paused: bool) -> PauseChange:
    # The message goes out with the change, never without it.
    replies = await link.transaction(
        [
            ("SADD" if paused else "SREM", keys.paused, task_type),
            ("PUBLISH", keys.paused_channel, f"{'pause' if paused else 'resume'} {task_type}"),
        ]
    )
    return PauseChange(task_type, paused, bool(replies[0]))


@_deferred
async def pause(link: IRedisLink, keys: Keys, task_type: str) -> PauseChange:
    """Tell every daemon to stop taking entries of this type; they stay queued."""
    return await _set_paused(link, keys, task_type, True)


@_deferred
async def resume(link: IRedisLink, keys: Keys, task_type: str) -> PauseChange:
    """Tell every daemon to take entries of this type again."""
    return await _set_paused(link, keys, task_type, False)


# Failed entries


@attrs.frozen
class FailedEntry:
    """
    One entry of a failed list, at C{index} when it was read.  C{fields} is
    the decoded JSON object, or None with C{problem} saying why it is not
    one: something other than the daemon wrote it.
    """

    index: int
    raw: bytes
    fields: dict[str, Any] | None
    problem: str | None

    @classmethod
    def decode(cls, index: int, raw: bytes) -> FailedEntry:
        try:
            fields = json.loads(raw)
        except ValueError:
            return cls(index, raw, None, "not JSON")
        if not isinstance(fields, dict):
            return cls(index, raw, None, "not a JSON object")
        return cls(index, raw, fields, None)

    @property
    def id(self) -> str:
        return entry_id(self.raw)

    def _get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = (self.fields or {}).get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    @property
    def args(self) -> list[Any] | None:
        args: list[Any] | None = self._get("Args", list)
        return args

    @property
    def error_message(self) -> str:
        message: str | None = self._get("ErrorMessage", str)
        return message or ""

    @property
    def failed_at(self) -> float | None:
        at: float | None = self._get("FailedAt", (int, float))
        return at

    @property
    def instance(self) -> str | None:
        name: str | None = self._get("Instance", str)
        return name

    @property
    def invalid(self) -> bool:
        """Stored with its raw C{Payload}: it was not a task, and would fail again."""
        return self.fields is not None and "Payload" in self.fields

    def producer_form(self) -> bytes:
        """
        The entry as its producer pushed it: the daemon's fields removed,
        the producer's kept.

        @raise OperationError: when it cannot be run again.
        """
        if self.fields is None:
            raise OperationError(f"not a failed-task record ({self.problem})")
        if self.invalid:
            raise OperationError("an invalid entry (stored with its Payload): it would fail again")
        args = self.args
        if args is None or not all(isinstance(a, str) for a in args):
            raise OperationError("not a failed-task record (Args is not an array of strings)")
        entry = {k: v for k, v in self.fields.items() if k not in DAEMON_FIELDS}
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "id": self.id,
            "failed_at": self.failed_at,
            "instance": self.instance,
            "args": self.args,
            "error": self.error_message,
            "invalid": self.invalid,
            "problem": self.problem,
            "entry": self.fields,
            "raw": self.raw.decode("utf-8", "backslashreplace"),
        }


@attrs.frozen
class FailedPage:
    """Some entries of a failed list, and how many it holds in all."""

    type: str
    key: str
    total: int
    entries: tuple[FailedEntry, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "key": self.key,
            "total": self.total,
            "entries": [e.as_json() for e in self.entries],
        }


@_deferred
async def failed_list(
    link: IRedisLink, keys: Keys, task_type: str, offset: int = 0, limit: int | None = None
) -> FailedPage:
    """The failed entries of a type, oldest first, from C{offset}."""
    key = keys.failed(task_type)
    stop = -1 if limit is None else offset + limit - 1
    total, raws = await _each(link, [("LLEN", key), ("LRANGE", key, offset, stop)])
    entries = tuple(FailedEntry.decode(offset + i, raw) for i, raw in enumerate(raws))
    return FailedPage(task_type, key, int(total), entries)


@_deferred
async def failed_entry(link: IRedisLink, keys: Keys, task_type: str, index: int) -> FailedEntry:
    """
    The failed entry at C{index}.

    @raise OperationError: when there is none.
    """
    key = keys.failed(task_type)
    total, raw = await _each(link, [("LLEN", key), ("LINDEX", key, index)])
    if raw is None:
        raise OperationError(_out_of_range(key, index, int(total)))
    return FailedEntry.decode(index, raw)


def _out_of_range(key: str, index: int, total: int) -> str:
    return f"no entry at index {index} of {key} (it holds {total})"


@attrs.frozen
class EntryRef:
    """An index in a failed list, and the L{entry_id} listed there, if known."""

    index: int
    id: str | None = None

    @classmethod
    def parse(cls, text: str) -> EntryRef:
        """C{INDEX} or C{INDEX@ID}, as C{failed ls} shows them."""
        index, at, expected = text.partition("@")
        if not index.isdigit() or (at and not expected):
            raise ValueError(f"expected INDEX or INDEX@ID, got {text!r}")
        return cls(int(index), expected.lower() or None)


@attrs.frozen
class Skipped:
    """An entry left where it was, and why."""

    index: int
    reason: str

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.frozen
class Moved:
    """What a retry or a purge did: the indices done, and those left alone."""

    type: str
    done: tuple[int, ...]
    skipped: tuple[Skipped, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "done": list(self.done),
            "skipped": [s.as_json() for s in self.skipped],
        }


async def _chosen(
    link: IRedisLink, key: str, refs: Sequence[EntryRef] | None
) -> tuple[list[FailedEntry], list[Skipped]]:
    """The entries named (all when C{refs} is None) and those that cannot be."""
    if refs is None:
        raws = await link.execute("LRANGE", key, 0, -1)
        return [FailedEntry.decode(i, raw) for i, raw in enumerate(raws)], []
    unique = {ref.index: ref for ref in refs}
    ordered = sorted(unique.values(), key=lambda ref: ref.index)
    replies = await _each(link, [("LLEN", key)] + [("LINDEX", key, r.index) for r in ordered])
    total, raws = int(replies[0]), replies[1:]
    entries, skipped = [], []
    for ref, raw in zip(ordered, raws, strict=True):
        if raw is None:
            skipped.append(Skipped(ref.index, _out_of_range(key, ref.index, total)))
        elif ref.id is not None and entry_id(raw) != ref.id:
            skipped.append(
                Skipped(
                    ref.index,
                    f"changed since it was listed (listed {ref.id}, now {entry_id(raw)})",
                )
            )
        else:
            entries.append(FailedEntry.decode(ref.index, raw))
    return entries, skipped


async def _move(
    link: IRedisLink, keys: Keys, task_type: str, refs: Sequence[EntryRef] | None, requeue: bool
) -> Moved:
    failed = keys.failed(task_type)
    entries, skipped = await _chosen(link, failed, refs)
    moves: list[tuple[FailedEntry, bytes]] = []
    for entry in entries:
        if not requeue:
            moves.append((entry, b""))
            continue
        try:
            moves.append((entry, entry.producer_form()))
        except OperationError as e:
            skipped.append(Skipped(entry.index, str(e)))
    done: list[int] = []
    removed = 0
    marker = f"goophry-ctl: removed {uuid.uuid4().hex}"
    for start in range(0, len(moves), CHUNK):
        chunk = moves[start : start + CHUNK]
        argv: list[str | bytes | int] = [marker]
        for entry, pushed in chunk:
            # Those moved before this chunk shifted it towards the head.
            argv += [entry.index - removed, entry.raw, pushed]
        replies = await link.execute("EVAL", MOVE_SCRIPT, 2, failed, keys.queue(task_type), *argv)
        for (entry, _), moved in zip(chunk, replies, strict=True):
            if moved:
                done.append(entry.index)
            else:
                skipped.append(Skipped(entry.index, "changed or gone since it was read"))
        removed += sum(1 for moved in replies if moved)
    return Moved(task_type, tuple(done), tuple(sorted(skipped, key=lambda s: s.index)))


@_deferred
async def failed_retry(
    link: IRedisLink, keys: Keys, task_type: str, refs: Sequence[EntryRef] | None
) -> Moved:
    """
    Move failed entries (all when C{refs} is None) back to the tail of their
    queue in their producer's form, each only if it is still the one named.
    """
    return await _move(link, keys, task_type, refs, requeue=True)


@_deferred
async def failed_purge(
    link: IRedisLink, keys: Keys, task_type: str, refs: Sequence[EntryRef] | None
) -> Moved:
    """Delete failed entries (all when C{refs} is None), each only if still the one named."""
    return await _move(link, keys, task_type, refs, requeue=False)


# Scheduled entries


class _Decoded:
    """What an entry's raw JSON holds, for the classes that keep it in C{raw}."""

    raw: bytes

    @property
    def fields(self) -> dict[str, Any] | None:
        try:
            fields = json.loads(self.raw)
        except ValueError:
            return None
        return fields if isinstance(fields, dict) else None

    @property
    def args(self) -> list[Any] | None:
        args = (self.fields or {}).get("Args")
        return args if isinstance(args, list) else None


@attrs.frozen
class ScheduledEntry(_Decoded):
    """One entry of a scheduled set, at C{index} (by due time) when it was read."""

    index: int
    raw: bytes
    due: float

    @property
    def id(self) -> str:
        return entry_id(self.raw)

    @property
    def attempt(self) -> int | None:
        """The run a retry will be; None for an entry a producer scheduled."""
        attempt = (self.fields or {}).get(ATTEMPT_FIELD)
        return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "id": self.id,
            "due": self.due,
            "args": self.args,
            "attempt": self.attempt,
            "raw": self.raw.decode("utf-8", "backslashreplace"),
        }


@_deferred
async def scheduled_list(link: IRedisLink, keys: Keys, task_type: str) -> list[ScheduledEntry]:
    """The scheduled entries of a type, soonest first."""
    flat = await link.execute("ZRANGE", keys.scheduled(task_type), 0, -1, "WITHSCORES")
    return [
        ScheduledEntry(index, raw, float(score))
        for index, (raw, score) in enumerate(zip(flat[::2], flat[1::2], strict=True))
    ]


@_deferred
async def scheduled_remove(link: IRedisLink, keys: Keys, task_type: str, ref: EntryRef) -> bytes:
    """
    Remove the scheduled entry at C{ref}'s index, only if it is still the
    one named; fires with the entry removed.

    @raise OperationError: when there is none, or it changed, or it became
        due and moved to its queue meanwhile.
    """
    key = keys.scheduled(task_type)
    total, found = await _each(link, [("ZCARD", key), ("ZRANGE", key, ref.index, ref.index)])
    if not found:
        raise OperationError(_out_of_range(key, ref.index, int(total)))
    [raw] = found
    if ref.id is not None and entry_id(raw) != ref.id:
        raise OperationError(
            f"entry {ref.index} of {key} changed since it was listed "
            f"(listed {ref.id}, now {entry_id(raw)})"
        )
    # By value: an entry that became due meanwhile is in its queue, not removed.
    if not await link.execute("ZREM", key, raw):
        raise OperationError(f"entry {ref.index} of {key} left the set meanwhile (due, or removed)")
    return bytes(raw)


# In flight


@attrs.frozen
class InflightEntry(_Decoded):
    """An entry an instance has taken and not finished."""

    instance: str
    alive: bool
    type: str
    position: int
    raw: bytes

    @property
    def recoveries(self) -> int:
        count = (self.fields or {}).get("GoophryRecoveries")
        return count if isinstance(count, int) else 0

    def as_json(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "alive": self.alive,
            "type": self.type,
            "position": self.position,
            "args": self.args,
            "recoveries": self.recoveries,
            "raw": self.raw.decode("utf-8", "backslashreplace"),
        }


@_deferred
async def inflight(
    link: IRedisLink, keys: Keys, task_type: str | None = None
) -> list[InflightEntry]:
    """What each registered instance has taken and not finished (of one type, or all)."""
    registered = await _registered(link, keys)
    lists = [(r, t) for r in registered for t in r.types if task_type is None or t == task_type]
    contents = await _each(link, [("LRANGE", keys.inflight(t, r.name), 0, -1) for r, t in lists])
    return [
        InflightEntry(r.name, r.alive, t, position, raw)
        for (r, t), raws in zip(lists, contents, strict=True)
        for position, raw in enumerate(raws)
    ]


# The head of a queue


@attrs.frozen
class QueueHead:
    """The first entries of a queue, as pushed, and how many it holds in all."""

    type: str
    total: int
    entries: tuple[bytes, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "total": self.total,
            "entries": [e.decode("utf-8", "backslashreplace") for e in self.entries],
        }


@_deferred
async def queue_head(link: IRedisLink, keys: Keys, task_type: str, limit: int) -> QueueHead:
    """The first C{limit} entries of a type's queue: those taken next."""
    key = keys.queue(task_type)
    total, raws = await _each(link, [("LLEN", key), ("LRANGE", key, 0, limit - 1)])
    return QueueHead(task_type, int(total), tuple(raws))
