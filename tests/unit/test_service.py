"""What the service decides from Redis's answers, without a reactor."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.logger import Logger, LogLevel

from goophry_tx.service import GoophryService, parse_redis_version


def test_the_version_is_read_from_info_server() -> None:
    info = b"# Server\r\nredis_git_sha1:00000000\r\nredis_version:6.0.16\r\nos:Linux\r\n"
    assert parse_redis_version(info) == (6, 0, 16)
    assert parse_redis_version(b"# Server\r\nredis_version:7.2.4\r\n") == (7, 2, 4)
    assert parse_redis_version(b"nothing here") == ()


def _check(info: bytes) -> tuple[list[SimpleNamespace], list[dict[str, object]]]:
    events: list[dict[str, object]] = []
    consumers = [SimpleNamespace(atomic=True), SimpleNamespace(atomic=True)]
    fake = SimpleNamespace(consumers=consumers, log=Logger(observer=events.append))
    GoophryService._check_version(fake, info)  # type: ignore[arg-type]
    return consumers, events


def test_redis_older_than_6_2_falls_back_to_blpop_and_says_so() -> None:
    consumers, events = _check(b"redis_version:6.0.16\r\n")
    assert [c.atomic for c in consumers] == [False, False]
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert "BLPOP" in str(events[0]["log_format"])
    assert events[0]["version"] == "6.0.16"


def test_redis_6_2_and_newer_keeps_blmove() -> None:
    for version in (b"6.2.0", b"7.0.15"):
        consumers, events = _check(b"redis_version:" + version + b"\r\n")
        assert [c.atomic for c in consumers] == [True, True]
        assert events == []
