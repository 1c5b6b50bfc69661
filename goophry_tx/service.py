"""
The daemon as a tree of Twisted services, built from a L{Config}.

Data flows one way: config -> this service -> a consumer per task type ->
the script runner -> outcome -> outcome store, ErrorScript and stats.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorCore, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from goophry_tx import __version__
from goophry_tx.config import Config, split_host_port
from goophry_tx.consumer import Consumer
from goophry_tx.dashboard.history import HistoryWriter
from goophry_tx.dashboard.resource import DashboardResource, StatsRouter
from goophry_tx.failures import ErrorNotifier, OutcomeStore
from goophry_tx.keys import Keys
from goophry_tx.recovery import Abandoned, Heartbeat
from goophry_tx.redis import ConnectionError, RedisHealth, RedisLink
from goophry_tx.runner import ScriptRunner
from goophry_tx.spawn import PosixSpawner
from goophry_tx.stats import Stats, StatsResource
from goophry_tx.task import Task, parse_entry
from goophry_tx.tls import server_tls_options


def instance_name() -> str:
    """A name for this daemon instance: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def parse_redis_version(info: bytes) -> tuple[int, ...]:
    """The server's version from the text of C{INFO server}."""
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("redis_version:"):
            return tuple(int(p) for p in line.split(":", 1)[1].strip().split(".") if p.isdigit())
    return ()


def parse_redis_uptime(info: bytes) -> float | None:
    """Seconds the server has been up, from the text of C{INFO server}."""
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("uptime_in_seconds:"):
            try:
                return float(line.split(":", 1)[1])
            except ValueError:
                return None
    return None


class GoophryService(MultiService):
    """Everything one daemon runs, started and stopped together."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        verbose: bool = False,
        instance: str | None = None,
        redis_endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.verbose = verbose
        self.keys = Keys(config.redis_queue_key)
        self.stats = Stats(reactor, [t.type for t in config.tasks])

        address = config.redis_address
        self.health = RedisHealth(reactor, address)
        self.stats.redis_connected = lambda: self.health.connected
        endpoint = redis_endpoint or self._redis_endpoint()

        def link(purpose: str) -> RedisLink:
            new = RedisLink(
                reactor,
                endpoint,
                self.health,
                name=purpose,
                password=config.redis_password,
                username=config.redis_username,
                db=config.redis_db,
                client_name=f"goophry:{purpose}",
            )
            new.setServiceParent(self)
            return new

        self.control = link("control")
        #: Per-minute counts of the outcomes, for every dashboard on this Redis.
        self.history = HistoryWriter(self.control, self.keys, reactor)
        self.history.setServiceParent(self)
        self._takers = {t.type: link(f"take:{index}") for index, t in enumerate(config.tasks)}
        self._instance = instance
        self.instance = instance or ""
        self.consumers: list[Consumer] = []
        if config.stats_interface:
            self._stats_service().setServiceParent(self)
        self._started: Deferred[None] | None = None
        self._stopping = False

    def _redis_endpoint(self) -> IStreamClientEndpoint:
        config = self.config
        if config.redis_network == "unix":
            return endpoints.UNIXClientEndpoint(self._reactor, config.redis_address, timeout=5)
        host, port = config.redis_host_port
        return endpoints.HostnameEndpoint(self._reactor, host, port, timeout=5)

    def _stats_service(self) -> StreamServerEndpointService:
        config = self.config
        assert config.stats_interface is not None
        host, port = split_host_port(config.stats_interface, "StatsInterface", config.path)
        endpoint: IStreamServerEndpoint
        if ":" in host:
            endpoint = endpoints.TCP6ServerEndpoint(self._reactor, port, interface=host)
        else:
            endpoint = endpoints.TCP4ServerEndpoint(self._reactor, port, interface=host)
        resource: Resource = StatsResource(self.stats, config.stats_pattern, config.metrics_pattern)
        if config.dashboard_pattern:
            dashboard = DashboardResource(
                self.control,
                self.keys,
                [t.type for t in config.tasks],
                self._reactor,
                config.dashboard_pattern,
                config.dashboard_token,
            )
            others = [config.stats_pattern, config.metrics_pattern]
            resource = StatsRouter(resource, others, dashboard, config.dashboard_pattern)
        site = Site(resource)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        factory: Any = site
        if config.stats_tls_cert_file and config.stats_tls_key_file:
            options = server_tls_options(
                config.stats_tls_cert_file, config.stats_tls_key_file, config.path
            )
            factory = TLSMemoryBIOFactory(options, False, site)
        service = StreamServerEndpointService(endpoint, factory)
        # A port that cannot be had stops the daemon at start.
        service._raiseSynchronously = True
        return service

    def _build(self) -> None:
        """
        Make what belongs to this process: its name (with its pid), the
        spawning threads, the consumers, the heartbeat.  Done at start, so
        that twistd's fork into the background comes before, not after.
        """
        config, reactor = self.config, self._reactor
        self.instance = self._instance or instance_name()
        self.spawner = PosixSpawner(reactor, threads=2)
        self.runner = ScriptRunner(self.spawner, reactor, config.output_limit, config.kill_grace)
        self.store = OutcomeStore(
            self.control, self.keys, self.instance, config.failed_tasks_ttl, reactor
        )
        self.notifier = ErrorNotifier(
            ScriptRunner(self.spawner, reactor, config.output_limit, config.kill_grace),
            config.error_script,
            config.error_queue_size,
            config.error_script_timeout,
        )
        self.consumers = [
            Consumer(
                task_type=task_type,
                keys=self.keys,
                instance=self.instance,
                blocking=self._takers[task_type.type],
                control=self.control,
                store=self.store,
                runner=self.runner,
                notifier=self.notifier,
                counters=self.stats.types[task_type.type],
                clock=reactor,
                verbose=self.verbose,
                block_timeout=config.block_timeout,
            )
            for task_type in config.tasks
        ]
        self.heartbeat = Heartbeat(
            self.control,
            self.keys,
            self.instance,
            [t.type for t in config.tasks],
            reactor,
            config.instance_timeout,
            config.max_recoveries,
            self._abandoned,
        )

    def startService(self) -> None:  # noqa: N802 (Twisted's name)
        self._build()
        super().startService()
        config = self.config
        self.log.info(
            "Goophry {version} instance {instance}: {types} from Redis {address}, key {key}",
            version=__version__,
            instance=self.instance,
            types=", ".join(f"{t.type} ({t.workers} workers)" for t in config.tasks),
            address=config.redis_address,
            key=config.redis_queue_key,
        )
        for warning in config.warnings:
            self.log.warn("{warning}", warning=warning)
        if config.stats_interface and config.dashboard_pattern:
            scheme = "https" if config.stats_tls_cert_file else "http"
            self.log.info(
                "dashboard at {url} ({access})",
                url=f"{scheme}://{config.stats_interface}{config.dashboard_pattern}",
                access="read-only" if config.dashboard_token is None else "writes need the token",
            )
        self._started = Deferred()
        self._stopping = False
        self._stopped_cleanly = False
        self._reactor.addSystemEventTrigger("after", "shutdown", self._forget_exit_signal)
        self._begin()
        self._reactor.callWhenRunning(self._watch_signals)

    def _watch_signals(self) -> None:
        """
        A second SIGTERM or SIGINT while stopping stops the running scripts
        at once; their entries go back to their queues.
        """
        for number in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(number)
            if not callable(previous):
                continue

            def handler(num: int, frame: Any, previous: Any = previous) -> None:
                if self._stopping:
                    self._reactor.callFromThread(self._stop_scripts, "a second signal")
                else:
                    previous(num, frame)

            signal.signal(number, handler)

    def _forget_exit_signal(self) -> None:
        """
        twistd ends with the signal it was stopped by (exit status -15);
        a stop that finished its work cleanly exits 0, as the original did.
        """
        if self._stopped_cleanly and hasattr(self._reactor, "_exitSignal"):
            self._reactor._exitSignal = None

    def _stop_scripts(self, why: str) -> None:
        self.log.info("{why}: stopping the running scripts now", why=why)
        for consumer in self.consumers:
            consumer.stop_scripts()

    def _begin(self) -> None:
        """
        Once Redis answers: learn its version, recover what a killed daemon
        on this host left in flight, start the heartbeat, then consume.
        """
        d = self.control.when_connected()
        info: Deferred[bytes] = d.addCallback(lambda _: self.control.execute("INFO", "server"))
        info.addCallback(self._check_version)
        d.addCallback(lambda uptime: self.heartbeat.start(uptime))
        d.addCallbacks(self._start_consumers, self._start_failed)

    def _check_version(self, info: bytes) -> float | None:
        """Warn about a Redis without BLMOVE; tell how long it has been up."""
        version = parse_redis_version(info)
        if version and version < (6, 2):
            self.log.warn(
                "Redis {version} has no BLMOVE (6.2 and newer): falling back to BLPOP, "
                "so a task running when the daemon dies is lost (at most once)",
                version=".".join(map(str, version)),
            )
            for consumer in self.consumers:
                consumer.atomic = False
        return parse_redis_uptime(info)

    def _abandoned(self, abandoned: Abandoned) -> None:
        """An entry recovered MaxRecoveries times: store it as failed."""
        entry = parse_entry(abandoned.type, abandoned.payload)
        error = (
            f"abandoned after {abandoned.recoveries} recoveries: the daemon running it "
            f"died each time (last {abandoned.dead_instance})"
        )
        self.log.error(
            "{type} entry {payload!r} {error}",
            type=abandoned.type,
            payload=abandoned.payload,
            error=error,
        )
        counters = self.stats.types.get(abandoned.type)
        if counters is not None:
            counters.failed += 1
        self.store.failed(entry, error)
        script = next((t.script for t in self.config.tasks if t.type == abandoned.type), "")
        args = entry.args if isinstance(entry, Task) else ()
        self.notifier.notify(script or abandoned.type, args, error)

    def _start_consumers(self, _: object) -> None:
        if not self.running or self._stopping:
            return
        assert self._started is not None
        for consumer in self.consumers:
            consumer.start()
        self._started.callback(None)

    def _start_failed(self, failure: Any) -> None:
        if not self.running:
            return
        if not failure.check(ConnectionError):
            self.log.failure("cannot start consuming; trying again", failure)
        # The link comes back by itself; start again when it has.
        self._reactor.callLater(0.5, self._begin)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """
        Stop taking entries at once, let running scripts finish (stopping
        them after ShutdownTimeout), write their outcomes, then disconnect.
        """
        if self._started is None:
            # Never started (a port could not be had, say).
            d: Deferred[None] = MultiService.stopService(self)
            return d
        self.log.info(
            "stopping: no more entries taken; waiting for {running} running scripts",
            running=sum(c.running for c in self.consumers),
        )
        self._stopping = True
        stopped = DeferredList([c.stop() for c in self.consumers])
        timer = None
        if self.config.shutdown_timeout > 0:
            timer = self._reactor.callLater(
                self.config.shutdown_timeout,
                self._stop_scripts,
                f"ShutdownTimeout ({self.config.shutdown_timeout:g}s) is over",
            )

        def finish(_: object) -> Deferred[int]:
            if timer is not None and timer.active():
                timer.cancel()
            return self.store.flush(timeout=10.0)

        def told(unwritten: int) -> Deferred[int]:
            d = self.notifier.flush(self._reactor, self.config.error_script_timeout + 1)
            return d.addCallback(lambda _: unwritten)

        def flushed(unwritten: int) -> Deferred[Any]:
            if unwritten:
                self.log.warn(
                    "{count} outcomes could not be written to Redis; their entries stay in "
                    "the in-flight lists and will run again",
                    count=unwritten,
                )
                self.heartbeat.pause()
                return succeed(None)
            return self.heartbeat.stop()

        def disconnect(_: object) -> Deferred[None]:
            d: Deferred[None] = MultiService.stopService(self)
            d.addBoth(self._close_spawner)
            return d

        done: Deferred[Any] = stopped.addCallback(finish)
        done.addCallback(told)
        done.addCallback(flushed)
        done.addCallback(disconnect)
        return done

    def _close_spawner(self, result: object) -> object:
        self.spawner.close()
        self._stopped_cleanly = True
        return result


def build_service(
    config: Config, reactor: IReactorCore | None = None, verbose: bool = False
) -> GoophryService:
    """Build the daemon's service; the reactor is the global one unless given."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return GoophryService(config, reactor, verbose=verbose)
