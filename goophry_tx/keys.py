"""
The names of every Redis key the daemon reads or writes.

All of them live under C{<RedisQueueKey>:} so that an operator can find
every entry with SCAN; README.rst lists them.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Keys:
    """Key names for one C{RedisQueueKey} prefix."""

    prefix: str

    def queue(self, task_type: str) -> str:
        """Producers RPUSH entries here; the wire protocol of the original."""
        return f"{self.prefix}:{task_type}"

    def failed(self, task_type: str) -> str:
        """Failed entries, as the original stores them."""
        return f"{self.prefix}:{task_type}:failed"

    def inflight(self, task_type: str, instance: str) -> str:
        """Entries one daemon instance has taken and not yet finished."""
        return f"{self.prefix}:{task_type}:inflight:{instance}"

    def heartbeat(self, instance: str) -> str:
        """Exists while the instance is alive; expires when it stops beating."""
        return f"{self.prefix}:instance:{instance}"

    @property
    def instances(self) -> str:
        """Hash of every registered instance to its description."""
        return f"{self.prefix}:instances"

    @property
    def paused(self) -> str:
        """Set of the task types no daemon takes entries of, for now."""
        return f"{self.prefix}:paused"

    @property
    def paused_channel(self) -> str:
        """
        Pub/sub channel told of every change to L{paused}, so that daemons
        learn of it at once without polling; the set stays the truth.
        """
        return f"{self.prefix}:paused"
