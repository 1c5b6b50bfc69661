"""
The soak's workload: entries with unique ids, the scripts that record their
runs, the config, and the producer's batches.
"""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass
from pathlib import Path

from goophry_tx.keys import Keys
from tests.helpers import RedisReplyError, RedisServer, task_payload, write_config, write_script

QUEUE_KEY = "gsoak"
KEYS = Keys(QUEUE_KEY)
#: A hash of batch number -> how many times that batch really landed.
PUSHES_KEY = "soakmeta:pushes"
TYPES = ("ok", "fail", "slow")
#: Runs of each failing entry: the fail type retries, so that the soak
#: accounts for entries moving through the scheduled set too.
FAIL_ATTEMPTS = 3
ID_RE = re.compile(rb"e\d{6}")


@dataclass
class Entry:
    """One entry the soak pushes, and what it expects of it."""

    id: str
    kind: str  # ok, fail, slow, invalid
    queue: str  # the task type whose queue it goes to
    payload: bytes
    batch: int


def make_entries(count: int, batch_size: int, rng: random.Random) -> list[Entry]:
    """C{count} entries: 80% ok, 8% failing, 3% slow, 9% invalid (in four forms)."""
    entries = []
    invalid_forms = (
        lambda i: b"not json " + i,
        lambda i: b'{"Note":"' + i + b'"}',
        lambda i: b'{"Args":[1,"' + i + b'"]}',
        lambda i: b"\xff\xfe" + i + b"\xc3",
    )
    invalid_n = 0
    for n in range(count):
        ident = f"e{n:06d}"
        roll = rng.random()
        if roll < 0.80:
            kind, queue, payload = "ok", "ok", task_payload(ident)
        elif roll < 0.88:
            kind, queue, payload = "fail", "fail", task_payload(ident)
        elif roll < 0.91:
            pause = f"{rng.uniform(0.2, 1.0):.2f}"
            kind, queue, payload = "slow", "slow", task_payload(ident, pause)
        else:
            kind, queue = "invalid", "ok"
            payload = invalid_forms[invalid_n % len(invalid_forms)](ident.encode())
            invalid_n += 1
        entries.append(Entry(ident, kind, queue, payload, n // batch_size))
    return entries


def batches_of(entries: list[Entry]) -> dict[int, list[Entry]]:
    """The entries by batch number."""
    batches: dict[int, list[Entry]] = collections.defaultdict(list)
    for e in entries:
        batches[e.batch].append(e)
    return batches


def write_files(
    workdir: Path, redis_address: str, workers: dict[str, int]
) -> tuple[Path, Path, Path]:
    """
    Write the three scripts and the config.

    @return: the config, the scripts directory and the records directory
        (C{<type>.rec}: one line per run of the type's script, the entry's id).
    """
    scripts = workdir / "scripts"
    records = workdir / "records"
    records.mkdir(parents=True, exist_ok=True)
    bodies = {
        "ok": f"printf '%s\\n' \"$1\" >> '{records}/ok.rec'\n",
        "fail": (
            f"printf '%s\\n' \"$1\" >> '{records}/fail.rec'\necho \"soak failure $1\"\nexit 1\n"
        ),
        "slow": f"sleep \"$2\"\nprintf '%s\\n' \"$1\" >> '{records}/slow.rec'\n",
    }
    for name, body in bodies.items():
        write_script(scripts, f"{name}.sh", body)
    config = write_config(
        workdir,
        RedisAddress=redis_address,
        RedisQueueKey=QUEUE_KEY,
        Tasks=[
            {
                "Type": t,
                "Script": str(scripts / f"{t}.sh"),
                "Workers": workers[t],
                **({"Retries": FAIL_ATTEMPTS - 1, "RetryBackoff": 0.1} if t == "fail" else {}),
            }
            for t in TYPES
        ],
        FailedTasksTTL=86400,
        InstanceTimeout=3,
        BlockTimeout=1,
    )
    return config, scripts, records


def push_batch(redis: RedisServer, number: int, batch: list[Entry]) -> bool:
    """
    One MULTI/EXEC: the batch's RPUSHes and its landing counter.

    @return: True if acknowledged; a producer retries a batch until it is.
    """
    by_queue: dict[str, list[bytes]] = collections.defaultdict(list)
    for e in batch:
        by_queue[e.queue].append(e.payload)
    commands: list[list[object]] = [["MULTI"]]
    for queue, payloads in by_queue.items():
        commands.append(["RPUSH", KEYS.queue(queue), *payloads])
    commands.append(["HINCRBY", PUSHES_KEY, str(number), 1])
    commands.append(["EXEC"])
    try:
        replies = redis.pipeline(*commands, timeout=5.0)
    except (OSError, RedisReplyError):
        return False
    return isinstance(replies[-1], list)
