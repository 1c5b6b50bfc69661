"""Entries that are not tasks go to the failed list, raw; the daemon goes on."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.helpers import shell_write, task_payload, wait_for
from tests.integration.conftest import Goophry, stats_when

pytestmark = pytest.mark.integration

INVALID: list[bytes] = [
    b"not json",
    b"[]",
    b"{}",
    b'{"Args":"x"}',
    b'{"Args":[1]}',
    b'{"Args":["ok",null]}',
    b'"just a string"',
    b"",
    b'{"Args":["caf\xe9"]}',  # Latin-1, not UTF-8
    b"\xff\xferaw",
]


def test_every_invalid_entry_is_stored_raw_and_the_daemon_goes_on(
    goophry: Goophry, tmp_path: Path, stats_address: str
) -> None:
    ran = tmp_path / "ran"
    told = tmp_path / "told"
    error_script = goophry.script("error.sh", f'printf "%s\\n" "$#" >> {told}')
    daemon = goophry.launch(
        shell_write(ran, 'printf "%s" "$1"'),
        *INVALID,
        task_payload("after"),
        task_type="job",
        FailedTasksTTL=300,
        ErrorScript=str(error_script),
        StatsInterface=stats_address,
    ).daemon

    wait_for(ran.exists, message=lambda: f"the valid task after them to run:\n{daemon.log_text()}")
    assert ran.read_text() == "after"

    entries = goophry.wait_failed("job", len(INVALID))
    assert len(entries) == len(INVALID)
    for raw, entry in zip(INVALID, entries, strict=True):
        assert entry["Args"] is None
        assert entry["ErrorMessage"].startswith("invalid task entry: "), entry
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8: kept exactly in base64 beside a readable form.
            assert base64.b64decode(entry["PayloadBase64"]) == raw
            assert entry["Payload"] == raw.decode("utf-8", "backslashreplace")
        else:
            assert entry["Payload"] == text
    ttl = goophry.redis.cli("TTL", goophry.failed_key("job"))
    assert isinstance(ttl, int) and 0 < ttl <= 300

    stats = stats_when(
        stats_address, lambda s: s["Invalid"]["job"] == len(INVALID) and s["Succeeded"]["job"]
    )
    assert stats["TaskCount"]["job"] == 1
    assert stats["Failed"]["job"] == 0

    # ErrorScript is told of each (one argument each time), and each is logged.
    wait_for(
        lambda: told.exists() and len(told.read_text().split()) == len(INVALID),
        message=lambda: f"ErrorScript told {len(INVALID)} times:\n{daemon.log_text()}",
    )
    assert set(told.read_text().split()) == {"1"}
    assert daemon.log_text().count("invalid task entry") >= len(INVALID)
    assert daemon.running()
    assert goophry.inflight_keys() == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b"{}", "Args is missing"),
        (b'{"Args":"x"}', "Args must be an array of strings"),
        (b'{"Args":[1]}', "Args must be an array of strings"),
        (b"\xc3\x28", "not valid UTF-8"),
    ],
    ids=["not-json", "array", "empty-object", "args-string", "args-number", "bad-utf8"],
)
def test_invalid_entry_message_names_the_problem(goophry: Goophry, raw: bytes, reason: str) -> None:
    daemon = goophry.launch("true", raw, task_type="job", FailedTasksTTL=60).daemon
    [entry] = goophry.wait_failed("job")
    assert entry["ErrorMessage"].startswith(f"invalid task entry: {reason}"), entry
    assert entry["Args"] is None
    assert "Payload" in entry
    assert reason in daemon.log_text()
