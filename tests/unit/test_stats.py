"""goophry_tx.stats: the JSON stats and the Prometheus metrics, served in memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from goophry_tx import __version__
from goophry_tx.keys import Keys
from goophry_tx.outcomes import failure_reason, type_counters
from goophry_tx.redis import ConnectionError, ResponseError
from goophry_tx.stats import QueueFigures, Stats, queue_figures
from goophry_tx.task import InvalidEntry, Outcome
from goophry_tx.web import StatsResource
from tests.unit.fakes import FakeRedisLink, failure_result_of, success_result_of


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)  # the clock does not start at zero
    return clock


@pytest.fixture
def stats(clock: Clock) -> Stats:
    return Stats(clock, type_counters(["mail", 'odd "type"']))


def client(stats: Stats, pattern: str = "/stats/", metrics: str = "/metrics") -> StubTreq:
    return StubTreq(StatsResource(stats, pattern, metrics))


def get(http: StubTreq, path: str) -> tuple[Any, bytes]:
    response = success_result_of(http.get(f"http://stats.test{path}", allow_redirects=False))
    return response, success_result_of(response.content())


def test_json_has_the_originals_fields_from_the_start(stats: Stats, clock: Clock) -> None:
    clock.advance(42.9)
    response, body = get(client(stats), "/stats/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    data = json.loads(body)
    assert data["Runtime"] == 42
    assert data["TaskCount"] == {"mail": 0, 'odd "type"': 0}
    assert data["Version"] == __version__
    assert list(data)[:3] == ["Runtime", "TaskCount", "Version"]


def test_json_counts_follow_the_counters(stats: Stats, clock: Clock) -> None:
    mail = stats.types["mail"]
    mail.started, mail.running, mail.succeeded, mail.failed, mail.invalid = 5, 1, 3, 1, 2
    stats.redis_connected = lambda: True
    clock.advance(3600)
    data = json.loads(get(client(stats), "/stats/")[1])
    assert data["Runtime"] == 3600
    assert data["TaskCount"]["mail"] == 5
    assert data["Running"]["mail"] == 1
    assert data["Succeeded"]["mail"] == 3
    assert data["Failed"]["mail"] == 1
    assert data["Invalid"]["mail"] == 2
    assert data["RedisConnected"] is True


@pytest.mark.parametrize("path", ["/stats/", "/stats/x", "/stats/x/y?z=1"])
def test_a_pattern_ending_in_slash_matches_its_subtree(stats: Stats, path: str) -> None:
    response, body = get(client(stats), path)
    assert response.code == 200
    assert "TaskCount" in json.loads(body)


def test_a_subtree_pattern_asked_without_its_slash_redirects(stats: Stats) -> None:
    response, _ = get(client(stats), "/stats")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/stats/"]


@pytest.mark.parametrize("path", ["/", "/other", "/stat", "/statsx", "/metrics/"])
def test_other_paths_are_404(stats: Stats, path: str) -> None:
    response, body = get(client(stats), path)
    assert response.code == 404
    assert body == b"404 page not found\n"


def test_a_pattern_without_slash_matches_only_itself(stats: Stats) -> None:
    http = client(stats, pattern="/stats")
    assert get(http, "/stats")[0].code == 200
    assert get(http, "/stats/")[0].code == 404
    assert get(http, "/stats/x")[0].code == 404


def test_the_default_pattern_matches_everything(stats: Stats) -> None:
    http = client(stats, pattern="/")
    for path in ("/", "/anything", "/a/b"):
        assert get(http, path)[0].code == 200


def metrics(http: StubTreq, path: str = "/metrics", **headers: str) -> tuple[Any, str]:
    response = success_result_of(
        http.get(f"http://stats.test{path}", headers=headers or None, allow_redirects=False)
    )
    return response, success_result_of(response.content()).decode("utf-8")


def families(text: str) -> dict[str, Metric]:
    """The metric families of a text exposition, by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """A family's samples (those called C{name}, if given) by their sorted labels."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


#: The metric names exposed before the move to prometheus_client, that stay.
TODAYS_NAMES = {
    "goophry_tasks_started_total": "counter",
    "goophry_tasks_succeeded_total": "counter",
    "goophry_tasks_failed_total": "counter",
    "goophry_entries_invalid_total": "counter",
    "goophry_entries_requeued_total": "counter",
    "goophry_tasks_running": "gauge",
    "goophry_redis_connected": "gauge",
}


def test_metrics_in_the_prometheus_text_format(stats: Stats) -> None:
    mail = stats.types["mail"]
    mail.started, mail.succeeded, mail.failed, mail.invalid, mail.requeued = 7, 4, 2, 1, 3
    mail.running = 1
    stats.redis_connected = lambda: True
    response, text = metrics(client(stats, pattern="/"))
    assert response.code == 200
    [content_type] = response.headers.getRawHeaders("content-type")
    assert content_type.startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    # The names and types the hand-written exposition had, unchanged.
    for name, kind in TODAYS_NAMES.items():
        assert f"# TYPE {name} {kind}" in lines, name
    found = families(text)
    assert samples(found["goophry_tasks_started"]) == {
        (("type", "mail"),): 7,
        (("type", 'odd "type"'),): 0,
    }
    assert samples(found["goophry_tasks_succeeded"])[(("type", "mail"),)] == 4
    assert samples(found["goophry_tasks_failed"])[(("type", "mail"),)] == 2
    assert samples(found["goophry_entries_invalid"])[(("type", "mail"),)] == 1
    assert samples(found["goophry_entries_requeued"])[(("type", "mail"),)] == 3
    assert samples(found["goophry_tasks_running"])[(("type", "mail"),)] == 1
    assert samples(found["goophry_redis_connected"]) == {(): 1}
    assert found["goophry_build_info"].type == "gauge"
    assert samples(found["goophry_build_info"]) == {(("version", __version__),): 1}
    # Uptime is the process's start time now, with the other process_* metrics.
    assert "goophry_uptime_seconds" not in found
    assert found["process_start_time_seconds"].type == "gauge"
    assert found["process_cpu_seconds"].type == "counter"
    assert "process_resident_memory_bytes" in found


def test_the_duration_histogram_counts_each_run_in_its_bucket(stats: Stats) -> None:
    mail = stats.types["mail"]
    for duration in (0.001, 0.005, 0.3, 0.3, 59.0, 3600.0, 5000.0):
        mail.observe(duration)
    found = families(metrics(client(stats))[1])
    histogram = found["goophry_task_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples(histogram, "goophry_task_duration_seconds_bucket").items()
        if dict(labels)["type"] == "mail"
    }
    assert list(buckets)[0] == "0.005" and list(buckets)[-2:] == ["3600.0", "+Inf"]
    # Cumulative: a bucket counts the runs that took at most its bound.
    assert buckets["0.005"] == 2
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 4
    assert buckets["30.0"] == 4
    assert buckets["60.0"] == 5
    assert buckets["3600.0"] == 6
    assert buckets["+Inf"] == 7
    count = samples(histogram, "goophry_task_duration_seconds_count")
    assert count == {(("type", "mail"),): 7, (("type", 'odd "type"'),): 0}
    total = samples(histogram, "goophry_task_duration_seconds_sum")
    assert total[(("type", "mail"),)] == pytest.approx(0.001 + 0.005 + 0.6 + 59 + 3600 + 5000)


def test_every_failure_reason_is_shown_from_the_start(stats: Stats) -> None:
    mail = stats.types["mail"]
    mail.failed_with("timeout")
    mail.failed_with("timeout")
    mail.failed_with("invalid")
    mail.failed_with("abandoned")
    failures = samples(families(metrics(client(stats))[1])["goophry_failures"])
    assert len(failures) == 2 * 7
    assert failures[(("reason", "timeout"), ("type", "mail"))] == 2
    assert failures[(("reason", "invalid"), ("type", "mail"))] == 1
    assert failures[(("reason", "abandoned"), ("type", "mail"))] == 1
    assert failures[(("reason", "exit"), ("type", "mail"))] == 0
    assert failures[(("reason", "start"), ("type", 'odd "type"'))] == 0
    # An invalid entry counts as invalid, the others as failed tasks.
    assert (mail.failed, mail.invalid) == (3, 1)


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Outcome(exit_code=1), "exit"),
        (Outcome(exit_code=None), "exit"),
        (Outcome(signal=9), "signal"),
        (Outcome(exit_code=0, output=b"oops"), "output"),
        (Outcome(exit_code=0, truncated=10), "output"),
        (Outcome(exit_code=2, output=b"oops"), "exit"),
        (Outcome(signal=9, timed_out=30.0), "timeout"),
        (Outcome(exit_code=0, timed_out=30.0), "timeout"),
        (Outcome(start_error="fork/exec x: no such file or directory"), "start"),
        (InvalidEntry("mail", b"x", "invalid task entry: not JSON"), "invalid"),
    ],
)
def test_the_failure_reason_of_an_outcome(outcome: Outcome | InvalidEntry, reason: str) -> None:
    assert failure_reason(outcome) == reason


def test_recoveries_and_reconnects_are_counted(stats: Stats) -> None:
    stats.recovered()
    stats.redis_reconnected()
    stats.redis_reconnected()
    found = families(metrics(client(stats))[1])
    assert samples(found["goophry_recoveries"]) == {(): 1}
    assert samples(found["goophry_redis_reconnects"]) == {(): 2}


def test_openmetrics_when_the_scraper_asks_for_it(stats: Stats) -> None:
    stats.types["mail"].started = 3
    stats.types["mail"].observe(0.2)
    response, text = metrics(
        client(stats), Accept="application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    [content_type] = response.headers.getRawHeaders("content-type")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    found = {f.name: f for f in openmetrics_families(text)}
    assert samples(found["goophry_tasks_started"])[(("type", "mail"),)] == 3
    assert found["goophry_build"].type == "info"
    count = samples(found["goophry_task_duration_seconds"], "goophry_task_duration_seconds_count")
    assert count[(("type", "mail"),)] == 1


def test_a_plain_scraper_gets_the_text_format(stats: Stats) -> None:
    response, text = metrics(client(stats), Accept="text/plain;version=0.0.4;q=0.3,*/*;q=0.1")
    [content_type] = response.headers.getRawHeaders("content-type")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# EOF" not in text


class QueueReads:
    """Stands in for L{queue_figures}: records each read, answered by the test."""

    def __init__(self) -> None:
        self.reads: list[Deferred[dict[str, QueueFigures]]] = []

    def __call__(self) -> Deferred[dict[str, QueueFigures]]:
        self.reads.append(Deferred())
        return self.reads[-1]


def queue_gauges(text: str) -> dict[str, dict[str, float]]:
    found = families(text)
    return {
        name: {dict(labels)["type"]: value for labels, value in samples(found[name]).items()}
        for name in ("goophry_queue_length", "goophry_inflight_entries", "goophry_failed_entries")
        if name in found
    }


def test_queue_gauges_are_read_when_scraped_at_most_every_5_seconds(
    stats: Stats, clock: Clock
) -> None:
    reads = QueueReads()
    stats.read_queues = reads
    http = client(stats)
    clock.advance(60)
    assert reads.reads == [], "read with nobody scraping"
    get(http, "/stats/")
    assert len(reads.reads) == 1, "the JSON stats' Scheduled counts start a read"

    # The first scrape finds that read under way and has nothing to show yet.
    assert queue_gauges(metrics(http)[1]) == {}
    assert len(reads.reads) == 1
    reads.reads[0].callback({"mail": QueueFigures(queued=5, inflight=2, failed=1)})
    assert queue_gauges(metrics(http)[1]) == {
        "goophry_queue_length": {"mail": 5},
        "goophry_inflight_entries": {"mail": 2},
        "goophry_failed_entries": {"mail": 1},
    }
    clock.advance(4.9)
    metrics(http)
    assert len(reads.reads) == 1, "read again within 5 s"

    clock.advance(0.1)
    assert queue_gauges(metrics(http)[1])["goophry_queue_length"] == {"mail": 5}
    assert len(reads.reads) == 2
    # A slow Redis: no second read while one is under way.
    clock.advance(30)
    metrics(http)
    assert len(reads.reads) == 2
    reads.reads[1].callback({"mail": QueueFigures(queued=0, inflight=0, failed=3)})
    assert queue_gauges(metrics(http)[1])["goophry_failed_entries"] == {"mail": 3}
    assert len(reads.reads) == 2, "the read started at the last scrape is still fresh"


def test_queue_gauges_are_dropped_when_redis_cannot_be_read(stats: Stats, clock: Clock) -> None:
    reads = QueueReads()
    stats.read_queues = reads
    http = client(stats)
    metrics(http)
    reads.reads[0].callback({"mail": QueueFigures(queued=5, inflight=0, failed=0)})
    clock.advance(5)
    metrics(http)
    with capturedLogs() as events:
        reads.reads[1].errback(ConnectionError("not connected to Redis (control)"))
    assert events == [], "an outage is logged by the links, once"
    assert queue_gauges(metrics(http)[1]) == {}

    clock.advance(5)
    metrics(http)
    with capturedLogs() as events:
        reads.reads[2].errback(ResponseError("WRONGTYPE Operation against a key"))
    [event] = events
    assert event["log_failure"].check(ResponseError)
    assert "queue figures" in event["log_format"]


def test_queue_figures_count_every_registered_instances_inflight_list() -> None:
    link = FakeRedisLink()
    keys = Keys("goophry")
    d = queue_figures(link, keys, ["mail", "sms"])
    link.take("HKEYS").answer([b"host:1:a", b"host:2:b"])
    transaction = link.take("MULTI")
    assert transaction.command == (
        "MULTI",
        ("LLEN", "goophry:mail"),
        ("LLEN", "goophry:mail:failed"),
        ("ZCARD", "goophry:mail:scheduled"),
        ("LLEN", "goophry:mail:inflight:host:1:a"),
        ("LLEN", "goophry:mail:inflight:host:2:b"),
        ("LLEN", "goophry:sms"),
        ("LLEN", "goophry:sms:failed"),
        ("ZCARD", "goophry:sms:scheduled"),
        ("LLEN", "goophry:sms:inflight:host:1:a"),
        ("LLEN", "goophry:sms:inflight:host:2:b"),
    )
    transaction.answer([10, 1, 6, 2, 3, 0, 4, 0, 0, 0])
    assert success_result_of(d) == {
        "mail": QueueFigures(queued=10, inflight=5, failed=1, scheduled=6),
        "sms": QueueFigures(queued=0, inflight=0, failed=4),
    }


def test_queue_figures_without_registered_instances() -> None:
    link = FakeRedisLink()
    d = queue_figures(link, Keys("k"), ["mail"])
    link.take("HKEYS").answer([])
    link.take("MULTI").answer([3, 0, 0])
    assert success_result_of(d) == {"mail": QueueFigures(queued=3, inflight=0, failed=0)}


def test_queue_figures_fail_when_redis_is_away() -> None:
    link = FakeRedisLink(connected=False)
    failure_result_of(queue_figures(link, Keys("k"), ["mail"]), ConnectionError)


def test_json_says_which_types_are_paused(stats: Stats) -> None:
    assert json.loads(get(client(stats), "/stats/")[1])["Paused"] == {
        "mail": False,
        'odd "type"': False,
    }
    stats.paused.add("mail")
    assert json.loads(get(client(stats), "/stats/")[1])["Paused"] == {
        "mail": True,
        'odd "type"': False,
    }


def test_a_custom_metrics_path(stats: Stats) -> None:
    http = client(stats, metrics="/prom")
    assert b"# TYPE goophry_tasks_started_total counter" in get(http, "/prom")[1]
    assert get(http, "/metrics")[0].code == 404


def test_head_gets_headers_without_a_body(stats: Stats) -> None:
    response = success_result_of(client(stats).head("http://stats.test/stats/"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert success_result_of(response.content()) == b""


def test_paths_are_cleaned_and_decoded_as_gos_mux_does(stats: Stats) -> None:
    http = client(stats, pattern="/stats")
    response, _ = get(http, "/x/../stats")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/stats"]
    response, _ = get(http, "//stats")
    assert (response.code, response.headers.getRawHeaders("location")) == (301, ["/stats"])
    response, body = get(http, "/st%61ts")
    assert response.code == 200 and "TaskCount" in json.loads(body)


def test_a_metrics_pattern_with_a_slash_serves_its_subtree(stats: Stats) -> None:
    response, body = get(client(stats, metrics="/metrics/"), "/metrics/goophry")
    assert response.code == 200
    assert b"# TYPE goophry_tasks_started_total counter" in body


def test_any_method_is_answered_as_the_original_did(stats: Stats) -> None:
    response = success_result_of(client(stats).post("http://stats.test/stats/", data=b""))
    assert response.code == 200
    assert "TaskCount" in json.loads(success_result_of(response.content()))


def test_the_metrics_say_which_types_are_paused(stats: Stats) -> None:
    stats.paused.update({"mail", "run elsewhere"})
    found = families(metrics(client(stats))[1])
    assert samples(found["goophry_type_paused"]) == {
        (("type", "mail"),): 1,
        (("type", 'odd "type"'),): 0,
    }
