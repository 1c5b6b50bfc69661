"""The soak's chaos schedule: when the kill -9s of the daemon and of Redis come."""

from __future__ import annotations

import random


def schedule(
    rng: random.Random, daemon_kills: int, redis_kills: int, window: float
) -> list[tuple[float, str]]:
    """
    C{(time, "daemon" | "redis")}: the kill -9s, spread over the chaos window.

    One kill in each of n equal slots of the window (after its first second),
    at a random moment inside the slot.
    """
    kinds = ["daemon"] * daemon_kills + ["redis"] * redis_kills
    rng.shuffle(kinds)
    n = len(kinds)
    if n == 0:
        return []
    slot = (window - 1.0) / n
    times = [1.0 + i * slot + rng.uniform(0.1, max(0.2, slot - 2.0)) for i in range(n)]
    return list(zip(times, kinds, strict=True))


def restart_pause(rng: random.Random, what: str) -> float:
    """How long the killed process stays down: a daemon up to 1.5 s, Redis up to 2 s."""
    return rng.uniform(0.1, 1.5) if what == "daemon" else rng.uniform(0.2, 2.0)
