"""The soak's verdict: lost, duplicated, undrained and unpushed entries told apart."""

from __future__ import annotations

import json
from collections import Counter

from bench.soak.accounting import account, failed_ids
from bench.soak.workload import FAIL_ATTEMPTS, Entry
from tests.helpers import task_payload

RUNS_NONE: dict[str, Counter[str]] = {"ok": Counter(), "fail": Counter(), "slow": Counter()}


def _entry(ident: str, kind: str = "ok", batch: int = 0) -> Entry:
    queue = "ok" if kind == "invalid" else kind
    return Entry(ident, kind, queue, task_payload(ident), batch)


def _runs(**by_type: list[str]) -> dict[str, Counter[str]]:
    return {t: Counter(by_type.get(t, [])) for t in ("ok", "fail", "slow")}


def _failed(*idents: str) -> list[bytes]:
    return [json.dumps({"Args": [i], "ErrorMessage": "exit status 1"}).encode() for i in idents]


def test_every_entry_run_once_is_accounted_for() -> None:
    entries = [_entry("e000000"), _entry("e000001", "slow"), _entry("e000002", "fail")]
    tally = account(
        entries,
        {0: 1},
        _runs(ok=["e000000"], slow=["e000001"], fail=["e000002"]),
        _failed("e000002"),
        {},
    )
    assert (tally.lost, tally.duplicates, tally.undrained, tally.unpushed) == (0, 0, 0, 0)
    assert tally.unknown_records == 0


def test_an_entry_that_never_ran_is_lost_with_its_detail() -> None:
    tally = account([_entry("e000000", batch=3)], {3: 1}, RUNS_NONE, [], {})
    assert tally.lost == 1
    assert tally.lost_detail == [
        {"id": "e000000", "kind": "ok", "batch": 3, "pushes": 1, "ran": 0, "stored": 0}
    ]


def test_a_failure_counts_only_once_it_is_stored() -> None:
    tally = account([_entry("e000000", "fail")], {0: 1}, _runs(fail=["e000000"]), [], {})
    assert tally.lost == 1


def test_an_invalid_entry_is_found_in_the_failed_list_by_the_id_in_its_payload() -> None:
    record = json.dumps({"Args": None, "Payload": "not json e000000"}).encode()
    tally = account([_entry("e000000", "invalid")], {0: 1}, RUNS_NONE, [record], {})
    assert tally.lost == 0 and tally.unknown_records == 0


def test_extra_runs_beyond_the_pushes_are_the_daemons_duplicates() -> None:
    tally = account([_entry("e000000")], {0: 1}, _runs(ok=["e000000"] * 3), [], {})
    assert (tally.duplicates, tally.duplicate_runs, tally.producer_duplicates) == (1, 2, 0)
    assert tally.duplicate_detail == [
        {"id": "e000000", "kind": "ok", "pushes": 1, "ran": 3, "stored": 0}
    ]


def test_a_batch_the_producer_pushed_twice_runs_twice_without_blame() -> None:
    tally = account([_entry("e000000")], {0: 2}, _runs(ok=["e000000"] * 2), [], {})
    assert (tally.duplicates, tally.producer_duplicates, tally.batches_pushed_twice) == (0, 1, 1)
    # Pushed twice, run once: one copy is lost.
    tally = account([_entry("e000000")], {0: 2}, _runs(ok=["e000000"]), [], {})
    assert tally.lost == 1


def test_a_failure_stored_twice_is_a_failed_list_duplicate() -> None:
    tally = account(
        [_entry("e000000", "fail")],
        {0: 1},
        _runs(fail=["e000000"]),
        _failed("e000000", "e000000"),
        {},
    )
    assert tally.failed_list_duplicates == 1 and tally.lost == 0


def test_an_ok_entry_in_the_failed_list_was_abandoned_not_lost() -> None:
    tally = account([_entry("e000000")], {0: 1}, RUNS_NONE, _failed("e000000"), {})
    assert (tally.abandoned, tally.lost) == (1, 0)


def test_entries_still_queued_are_undrained_and_unlanded_batches_unpushed() -> None:
    entries = [_entry("e000000", batch=0), _entry("e000001", batch=1)]
    tally = account(entries, {0: 1}, RUNS_NONE, [], {"e000000": "gsoak:ok"})
    assert (tally.undrained, tally.unpushed, tally.lost) == (1, 1, 0)


def test_records_of_no_entry_pushed_are_unknown() -> None:
    record = json.dumps({"Args": None, "Payload": "no id here"}).encode()
    tally = account([], {}, _runs(ok=["e999999"]), [*_failed("e888888"), record], {})
    assert tally.unknown_records == 3
    assert failed_ids([record]) == (Counter(), 1)


def test_a_failing_entry_runs_once_per_attempt_without_being_a_duplicate() -> None:
    attempts = ["e000000"] * FAIL_ATTEMPTS
    tally = account(
        [_entry("e000000", "fail")], {0: 1}, _runs(fail=attempts), _failed("e000000"), {}
    )
    assert (tally.lost, tally.duplicates) == (0, 0)
    again = account(
        [_entry("e000000", "fail")],
        {0: 1},
        _runs(fail=[*attempts, "e000000"]),
        _failed("e000000"),
        {},
    )
    assert (again.duplicates, again.duplicate_runs) == (1, 1)
