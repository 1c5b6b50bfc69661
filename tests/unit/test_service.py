"""What the service decides from Redis's answers, without a reactor."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.logger import Logger, LogLevel

from goophry_tx.consumer import AtMostOnceTake, AtomicTake
from goophry_tx.service import GoophryService, parse_redis_version


def test_the_version_is_read_from_info_server() -> None:
    info = b"# Server\r\nredis_git_sha1:00000000\r\nredis_version:6.0.16\r\nos:Linux\r\n"
    assert parse_redis_version(info) == (6, 0, 16)
    assert parse_redis_version(b"# Server\r\nredis_version:7.2.4\r\n") == (7, 2, 4)
    assert parse_redis_version(b"nothing here") == ()


def _check(info: bytes) -> tuple[SimpleNamespace, list[dict[str, object]]]:
    events: list[dict[str, object]] = []
    fake = SimpleNamespace(take=None, log=Logger(observer=events.append))
    GoophryService._check_version(fake, info)  # type: ignore[arg-type]
    return fake, events


def test_redis_older_than_6_2_falls_back_to_blpop_and_says_so() -> None:
    service, events = _check(b"redis_version:6.0.16\r\n")
    assert service.take is AtMostOnceTake
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert "BLPOP" in str(events[0]["log_format"])
    assert events[0]["version"] == "6.0.16"


def test_redis_6_2_and_newer_keeps_blmove() -> None:
    for info in (b"redis_version:6.2.0\r\n", b"redis_version:7.0.15\r\n", b"no version\r\n"):
        service, events = _check(info)
        assert service.take is AtomicTake
        assert events == []
