"""
The names of every Redis key the daemon reads or writes.

All of them live under C{<RedisQueueKey>:} so that an operator can find
every entry with SCAN; README.rst lists them.  The layout is written here
once: the Lua scripts that build key names themselves (for instances and
types they find in Redis) take its parts as arguments, through L{LUA_KEYS}.
"""

from __future__ import annotations

import attrs

#: After the prefix: the hash of every registered instance.
INSTANCES = "instances"
#: After the prefix: the start of each instance's heartbeat key.
HEARTBEAT = "instance:"
#: After a queue's name: its failed list.
FAILED = ":failed"
#: Between a queue's name and an instance's: that instance's in-flight list.
INFLIGHT = ":inflight:"
#: After a queue's name: its sorted set of entries due later (scheduled, retries).
SCHEDULED = ":scheduled"
#: After the prefix: the set of paused task types (and its pub/sub channel).
PAUSED = "paused"
#: After the prefix: the start of the dashboard's per-minute history keys.
HISTORY = "history:"

#: Lua that names keys as L{Keys} does, from the four parts of
#: L{Keys.script_layout} in C{ARGV[1]} to C{ARGV[4]}; a script that starts
#: with it finds its own arguments from C{ARGV[5]} on.
LUA_KEYS = """
local instances_key = ARGV[1]
local function heartbeat_key(name) return ARGV[2] .. name end
local function queue_key(t) return ARGV[3] .. t end
local function inflight_key(t, name) return ARGV[3] .. t .. ARGV[4] .. name end
"""


def reserved_type(task_type: str) -> bool:
    """
    Whether a task type's queue would be one of the daemon's own keys, or
    look like one to a C{SCAN} or C{KEYS} pattern.
    """
    return (
        task_type in (INSTANCES, PAUSED)
        or task_type.startswith((HEARTBEAT, HISTORY))
        or INFLIGHT in task_type
        or task_type.endswith((FAILED, SCHEDULED, INFLIGHT.rstrip(":")))
    )


@attrs.frozen
class Keys:
    """Key names for one C{RedisQueueKey} prefix."""

    prefix: str

    def queue(self, task_type: str) -> str:
        """Producers RPUSH entries here; the wire protocol of the original."""
        return f"{self.prefix}:{task_type}"

    def failed(self, task_type: str) -> str:
        """Failed entries, as the original stores them."""
        return f"{self.prefix}:{task_type}{FAILED}"

    def scheduled(self, task_type: str) -> str:
        """Entries due later, scored by their due time in unix seconds."""
        return f"{self.prefix}:{task_type}{SCHEDULED}"

    def inflight(self, task_type: str, instance: str) -> str:
        """Entries one daemon instance has taken and not yet finished."""
        return f"{self.prefix}:{task_type}{INFLIGHT}{instance}"

    def heartbeat(self, instance: str) -> str:
        """Exists while the instance is alive; expires when it stops beating."""
        return f"{self.prefix}:{HEARTBEAT}{instance}"

    @property
    def instances(self) -> str:
        """Hash of every registered instance to its description."""
        return f"{self.prefix}:{INSTANCES}"

    @property
    def script_layout(self) -> tuple[str, str, str, str]:
        """
        The first four arguments of a script that starts with L{LUA_KEYS}:
        the instances hash, and what goes before an instance's name in its
        heartbeat key, before a type in its queue's name, and between a
        queue's name and an instance's in an in-flight list.
        """
        return (self.instances, self.heartbeat(""), self.queue(""), INFLIGHT)

    @property
    def paused(self) -> str:
        """Set of the task types no daemon takes entries of, for now."""
        return f"{self.prefix}:{PAUSED}"

    @property
    def paused_channel(self) -> str:
        """
        Pub/sub channel told of every change to L{paused}, so that daemons
        learn of it at once without polling; the set stays the truth.
        """
        return f"{self.prefix}:{PAUSED}"
