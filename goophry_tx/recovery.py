"""
Instances, heartbeats, and the recovery of a dead instance's entries.

Each daemon instance registers itself in C{<K>:instances} and keeps the
key C{<K>:instance:<name>} alive with a heartbeat.  Every beat also finds
the instances whose key has lapsed; their in-flight entries go back to the
head of their queues, in one Lua script per dead instance, so several
instances recovering at once neither duplicate nor drop an entry.  The
count of recoveries travels in the entry itself (a C{GoophryRecoveries}
field put first in its JSON object), so identical entries never share it
and nothing is left behind to clean up.  An entry recovered
C{MaxRecoveries} times (its runs keep killing daemons) is not put back: it
moves to the recovering instance's in-flight list, to be stored as failed
with a message that says why.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.keys import LUA_KEYS, Keys
from goophry_tx.redis import IRedisLink, ResponseError, is_transient

# ARGV after the key layout: own name, heartbeat milliseconds, own record,
# and '1' to look for dead instances.  Beats, registers, and returns the
# names of the registered instances whose heartbeat has lapsed.
BEAT_SCRIPT = (
    LUA_KEYS
    + """
local me = ARGV[5]
redis.call('SET', heartbeat_key(me), '1', 'PX', ARGV[6])
redis.call('HSET', instances_key, me, ARGV[7])
local dead = {}
if ARGV[8] ~= '1' then return dead end
for _, name in ipairs(redis.call('HKEYS', instances_key)) do
  if redis.call('EXISTS', heartbeat_key(name)) == 0 then
    dead[#dead + 1] = name
  end
end
return dead
"""
)

# ARGV after the key layout: dead instance, own name, MaxRecoveries, force
# (1: the instance is known to be gone).  Puts the dead instance's in-flight
# entries back at the head of their queues, in their order, counting the
# recovery in the entry itself: {"GoophryRecoveries":N, ...the producer's
# fields}.  An entry recovered MaxRecoveries times goes to our own in-flight
# list instead.  The instance stays registered until a recovery finds its
# lists empty: one that was only slow may have taken more entries since, and
# a registration is how they are found.  Returns nothing when there was
# nothing to recover, else how many went back, then the abandoned ones as a
# flat list: type, entry, count.
RECOVER_SCRIPT = (
    LUA_KEYS
    + """
local dead, me = ARGV[5], ARGV[6]
local limit = tonumber(ARGV[7])
if ARGV[8] ~= '1' and redis.call('EXISTS', heartbeat_key(dead)) == 1 then
  return {}
end
local record = redis.call('HGET', instances_key, dead)
if not record then return {} end
local ok, decoded = pcall(cjson.decode, record)
local types = (ok and type(decoded) == 'table' and decoded['types']) or {}
local mark = '{"GoophryRecoveries":'
local function count_of(item)
  if string.sub(item, 1, #mark) == mark then
    local digits, rest = string.match(item, '^(%d+),(.*)$', #mark + 1)
    if digits then return tonumber(digits), '{' .. rest end
    digits = string.match(item, '^(%d+)}$', #mark + 1)
    if digits then return tonumber(digits), '{}' end
  end
  return 0, item
end
local function marked(original, n)
  local body = string.match(original, '^%s*{(.*)$')
  if not body then return original end
  if string.match(body, '^%s*}%s*$') then return mark .. n .. '}' end
  return mark .. n .. ',' .. body
end
local result = {'0'}
local requeued, found = 0, 0
for _, t in ipairs(types) do
  local theirs = inflight_key(t, dead)
  local items = redis.call('LRANGE', theirs, 0, -1)
  found = found + #items
  for i = #items, 1, -1 do
    local item = items[i]
    local count, original = count_of(item)
    count = count + 1
    if count >= limit then
      redis.call('RPUSH', inflight_key(t, me), item)
      result[#result + 1] = t
      result[#result + 1] = item
      result[#result + 1] = tostring(count)
    else
      redis.call('LPUSH', queue_key(t), marked(original, count))
      requeued = requeued + 1
    end
  end
  redis.call('DEL', theirs)
end
redis.call('DEL', heartbeat_key(dead))
if found == 0 then
  redis.call('HDEL', instances_key, dead)
  return {}
end
result[1] = tostring(requeued)
return result
"""
)

# ARGV after the key layout: own name, then the types.  Unregisters, unless
# an entry is still in one of our in-flight lists: then the heartbeat is left
# to lapse, so that another instance recovers it.
LEAVE_SCRIPT = (
    LUA_KEYS
    + """
local me = ARGV[5]
for i = 6, #ARGV do
  if redis.call('LLEN', inflight_key(ARGV[i], me)) > 0 then
    return 0
  end
end
redis.call('DEL', heartbeat_key(me))
redis.call('HDEL', instances_key, me)
return 1
"""
)


def _proc_stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name, or none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return []
    # The command name may hold spaces: count fields after its ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19].decode() if len(fields) > 19 else None


def process_alive(pid: int, start_time: str | None) -> bool:
    """Whether the process that registered with this pid still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if not fields:
        return os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc/self")
    if fields[0] in (b"Z", b"X"):
        # Killed, not yet reaped by its parent.
        return False
    return start_time is None or fields[19].decode() == start_time


def machine_identity() -> tuple[str, str]:
    """
    This boot of this machine, and this pid namespace: pids only mean the
    same process where both match (containers may share a hostname).
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return boot, pidns


@attrs.frozen
class Abandoned:
    """An entry recovered too often, now in our in-flight list."""

    type: str
    payload: bytes
    recoveries: int
    dead_instance: str


class HeartbeatService(Service):
    """
    Keeps this instance registered and alive in Redis, and recovers the
    entries of instances that are not.

    The daemon's service makes it a child once Redis has answered and
    L{prepare} is done: it beats at once, then every L{interval} seconds,
    on a L{TimerService}.  Stopping waits for a beat under way, then
    unregisters.
    """

    log = Logger()

    def __init__(
        self,
        link: IRedisLink,
        keys: Keys,
        instance: str,
        types: list[str],
        clock: IReactorTime,
        instance_timeout: float,
        max_recoveries: int,
        on_abandoned: Callable[[Abandoned], None],
        host: str | None = None,
        pid: int | None = None,
        on_beat: Callable[[], Deferred[None]] | None = None,
        on_recovered: Callable[[], object] | None = None,
    ) -> None:
        """
        @param on_beat: what else is read from Redis at every beat, in the
            same round trip (the paused task types); its Deferred must not
            fail.  The first beat is over once it has fired.
        @param on_recovered: called for each dead instance whose in-flight
            entries this one recovered (counted in the metrics).
        """
        self._link = link
        self._keys = keys
        self.instance = instance
        self._clock = clock
        self._types = list(types)
        self._instance_timeout = instance_timeout
        self._quiet_until = 0.0
        self._after_outage = False
        # Lapses after 0.6 of InstanceTimeout and is renewed every 0.2, so a
        # dead instance is found within 0.8 of it.
        self._ttl_ms = max(300, int(instance_timeout * 600))
        self.interval = instance_timeout / 5
        self._max_recoveries = max_recoveries
        self._on_abandoned = on_abandoned
        self._on_beat = on_beat
        self._on_recovered = on_recovered
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self._identity = machine_identity()
        self._start_time = process_start_time(self.pid)
        self._started = int(clock.seconds())
        self._record = self._make_record()
        self._timer = TimerService(self.interval, self._beat)
        self._timer.clock = clock
        self._beaten = False
        self._waiting: list[Deferred[None]] = []
        self._unregister = True

    def _make_record(self) -> str:
        """What this instance registers: where it runs, and its types."""
        return json.dumps(
            {
                "host": self.host,
                "boot": self._identity[0],
                "pidns": self._identity[1],
                "pid": self.pid,
                "start": self._start_time,
                "started": self._started,
                "types": self._types,
            },
            separators=(",", ":"),
        )

    def add_types(self, types: Iterable[str]) -> None:
        """
        Register types a reload added, from the next beat on, so that their
        in-flight entries are recovered if this instance dies.  Types are
        never taken off: a removed one's in-flight list may still hold an
        entry whose outcome could not be written.
        """
        added = [t for t in types if t not in self._types]
        if added:
            self._types.extend(added)
            self._record = self._make_record()

    def prepare(self, redis_uptime: float | None) -> Deferred[None]:
        """
        What comes before the first beat: recover, at once, what died on
        this host.  A Redis that has only just started may have lost
        heartbeats that were alive: the beats look for dead instances only
        once every live one has had the time to beat again.
        """
        if redis_uptime is not None and redis_uptime < self._instance_timeout:
            self._quiet_until = self._clock.seconds() + self._instance_timeout - redis_uptime
        return self.recover_local()

    def startService(self) -> None:
        """Beat now, and every L{interval} seconds until stopped."""
        super().startService()
        self._beaten = False
        self._unregister = True
        self._timer.startService()

    def when_beating(self) -> Deferred[None]:
        """
        Fires once the first beat since the start is over.  Redis may have
        refused it (it was away): the next beat tries again.
        """
        if self._beaten:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def keep_registered(self) -> None:
        """
        Stop without unregistering: outcomes of ours could not be written,
        so their entries are still in flight.  The heartbeat lapses, and
        another instance recovers them.
        """
        self._unregister = False

    def stopService(self) -> Deferred[None]:
        """
        Stop beating, after the beat under way if there is one; then
        unregister, unless entries of ours are still in flight: then the
        heartbeat lapses and another instance recovers them.
        """
        super().stopService()
        for waiting in list(self._waiting):
            # Its canceller takes it off the list.
            waiting.cancel()
        d: Deferred[None] = self._timer.stopService()
        if self._unregister:
            d.addCallback(lambda _: self._leave())
        return d

    def _leave(self) -> Deferred[None]:
        d = self._link.execute(
            "EVAL", LEAVE_SCRIPT, 0, *self._keys.script_layout, self.instance, *self._types
        )

        def left(unregistered: int) -> None:
            if not unregistered:
                self.log.warn(
                    "entries of this instance are still in flight; they will be recovered "
                    "when its heartbeat lapses"
                )

        def failed(failure: Failure) -> None:
            # Our registration stays; it is recovered, as a dead instance's
            # would be, once the heartbeat lapses.
            self.log.warn(
                "could not unregister this instance: {error}", error=failure.getErrorMessage()
            )

        return d.addCallbacks(left, failed)

    def _beat(self) -> Deferred[None]:
        now = self._clock.seconds()
        if self._after_outage:
            # Heartbeats may have lapsed while Redis was away, ours too:
            # give every live instance the time to beat again first.
            self._after_outage = False
            self._quiet_until = now + self._instance_timeout
        d = self._link.execute(
            "EVAL",
            BEAT_SCRIPT,
            0,
            *self._keys.script_layout,
            self.instance,
            self._ttl_ms,
            self._record,
            "1" if now >= self._quiet_until else "0",
        )
        # Sent behind the beat, its reply comes with the beat's.
        also = self._on_beat() if self._on_beat is not None else None
        d.addCallback(self._recover_all, False)
        if also is not None:
            d.addCallback(lambda _: also)
        d.addErrback(self._beat_failed)
        d.addCallback(self._beat_done)
        return d

    def _beat_done(self, _: object) -> None:
        self._beaten = True
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.callback(None)

    def _beat_failed(self, failure: Failure) -> None:
        self._after_outage = True
        if is_transient(failure):
            # Redis being away is logged once by the links.
            return
        if failure.check(ResponseError):
            self.log.error("heartbeat failed: {error}", error=failure.getErrorMessage())
        else:
            # A bug (in recovering, or in recording what was abandoned): its traceback.
            self.log.failure("heartbeat failed", failure)

    def recover_local(self) -> Deferred[Any]:
        """
        Recover, at once, the instances registered from this host whose
        process is gone (a daemon killed and started again).
        """

        def gone(records: list[bytes]) -> list[bytes]:
            names = []
            for name, raw in zip(records[::2], records[1::2], strict=False):
                try:
                    record = json.loads(raw)
                    host, pid, start = record["host"], int(record["pid"]), record.get("start")
                    identity = (record.get("boot", ""), record.get("pidns", ""))
                except (ValueError, KeyError, TypeError):
                    continue
                if name.decode() == self.instance or host != self.host:
                    continue
                if identity != self._identity:
                    # Another container, or this host before a reboot: its
                    # heartbeat tells, not its pid.
                    continue
                if pid == self.pid or not process_alive(pid, start):
                    names.append(name)
            return names

        d = self._link.execute("HGETALL", self._keys.instances)
        d.addCallback(gone)
        d.addCallback(self._recover_all, True)
        return d

    def _recover_all(self, names: list[bytes], force: bool) -> Deferred[None]:
        d: Deferred[Any] = succeed(None)
        for name in names:
            d.addCallback(self._recover_one, name.decode("utf-8", "replace"), force)
        return d

    def _recover_one(self, _: object, dead: str, force: bool) -> Deferred[None]:
        return self._recover(dead, force)

    def _recover(self, dead: str, force: bool) -> Deferred[None]:
        d = self._link.execute(
            "EVAL",
            RECOVER_SCRIPT,
            0,
            *self._keys.script_layout,
            dead,
            self.instance,
            self._max_recoveries,
            1 if force else 0,
        )

        def recovered(reply: list[bytes]) -> None:
            if not reply:
                return
            requeued, flat = int(reply[0]), reply[1:]
            self.log.warn(
                "instance {dead} is gone: {requeued} of its in-flight entries went back to "
                "the head of their queues, {abandoned} abandoned",
                dead=dead,
                requeued=requeued,
                abandoned=len(flat) // 3,
            )
            if self._on_recovered is not None:
                self._on_recovered()
            for i in range(0, len(flat), 3):
                self._on_abandoned(
                    Abandoned(
                        type=flat[i].decode("utf-8", "replace"),
                        payload=flat[i + 1],
                        recoveries=int(flat[i + 2]),
                        dead_instance=dead,
                    )
                )

        return d.addCallback(recovered)
