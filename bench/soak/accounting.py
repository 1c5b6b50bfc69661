"""
The soak's verdict: what became of every entry pushed, from what was recorded.

A pure function of the records (no Redis, no files), so that the rules that
tell a lost entry from a duplicate have tests of their own.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bench.soak.workload import FAIL_ATTEMPTS, ID_RE, TYPES, Entry

#: How many lost or duplicated entries are described in full.
DETAIL = 50


@dataclass
class Tally:
    """What became of the entries: the figures the verdict rests on."""

    lost: int = 0
    undrained: int = 0
    unpushed: int = 0
    duplicates: int = 0
    duplicate_runs: int = 0
    producer_duplicates: int = 0
    batches_pushed_twice: int = 0
    failed_list_duplicates: int = 0
    abandoned: int = 0
    unknown_records: int = 0
    lost_detail: list[dict[str, Any]] = field(default_factory=list)
    duplicate_detail: list[dict[str, Any]] = field(default_factory=list)

    def copy_to(self, other: Tally) -> None:
        """Set these figures on C{other} (a L{Tally} with more fields)."""
        for f in fields(Tally):
            setattr(other, f.name, getattr(self, f.name))


def failed_ids(records: Sequence[bytes]) -> tuple[collections.Counter[str], int]:
    """
    The entry ids in failed-list records, and how many records name none.

    A valid task is known by its first argument, an invalid entry by the id
    inside its raw payload.
    """
    failed: collections.Counter[str] = collections.Counter()
    unknown = 0
    for raw in records:
        record = json.loads(raw)
        args = record.get("Args")
        ident: str | None = None
        if isinstance(args, list) and args and isinstance(args[0], str):
            ident = args[0]
        elif isinstance(record.get("Payload"), str):
            match = ID_RE.search(record["Payload"].encode("utf-8", "surrogateescape"))
            ident = match.group().decode() if match else None
        if ident is None:
            unknown += 1
        else:
            failed[ident] += 1
    return failed, unknown


def account(
    entries: Sequence[Entry],
    pushes: Mapping[int, int],
    runs: Mapping[str, collections.Counter[str]],
    failed_records: Sequence[bytes],
    queued: Mapping[str, str],
) -> Tally:
    """
    Account for every entry.

    @param pushes: batch number -> how many times the batch landed.
    @param runs: task type -> entry id -> runs of the type's script.
    @param failed_records: every failed list's records, raw.
    @param queued: entry id -> the queue or in-flight list still holding it
        (empty when everything drained).
    """
    tally = Tally(batches_pushed_twice=sum(1 for v in pushes.values() if v > 1))
    failed, tally.unknown_records = failed_ids(failed_records)
    known = {e.id for e in entries}
    for t in TYPES:
        tally.unknown_records += sum(n for i, n in runs[t].items() if i not in known)
    tally.unknown_records += sum(n for i, n in failed.items() if i not in known)

    for e in entries:
        landed = pushes.get(e.batch, 0)
        ran = runs["ok"][e.id] + runs["slow"][e.id] if e.kind in ("ok", "slow") else 0
        if e.kind == "fail":
            ran = runs["fail"][e.id]
        stored = failed[e.id]
        if e.kind in ("ok", "slow"):
            accounted = ran + stored
            if stored:
                tally.abandoned += 1
        else:
            accounted = stored  # a failure counts only once it is stored
        if e.id in queued:
            tally.undrained += 1
            continue
        if landed == 0 and accounted == 0:
            tally.unpushed += 1  # the producer never got its batch in (time limit)
            continue
        if accounted == 0 or accounted < landed:
            tally.lost += 1
            if len(tally.lost_detail) < DETAIL:
                tally.lost_detail.append(
                    {
                        "id": e.id,
                        "kind": e.kind,
                        "batch": e.batch,
                        "pushes": landed,
                        "ran": ran,
                        "stored": stored,
                    }
                )
            continue
        # Duplicate runs beyond the copies the producer pushed (each run
        # FAIL_ATTEMPTS times when it fails) are the daemon's.
        per_copy = FAIL_ATTEMPTS if e.kind == "fail" else 1
        daemon_dup = False
        if ran > per_copy:
            if ran > landed * per_copy:
                tally.duplicates += 1
                tally.duplicate_runs += ran - max(1, landed) * per_copy
                daemon_dup = True
            else:
                tally.producer_duplicates += 1
        if stored > max(1, landed):
            tally.failed_list_duplicates += 1
            daemon_dup = True
        if daemon_dup and len(tally.duplicate_detail) < DETAIL:
            tally.duplicate_detail.append(
                {"id": e.id, "kind": e.kind, "pushes": landed, "ran": ran, "stored": stored}
            )
    return tally
