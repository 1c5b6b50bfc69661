"""
The daemon as a tree of Twisted services, built from a L{Config}.

Data flows one way: config -> this service -> a consumer per task type ->
the script runner -> outcome -> outcome store, ErrorScript and stats.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx import __version__
from goophry_tx.config import Config, TaskType, split_host_port
from goophry_tx.connect import connection_check, describe, redis_endpoint
from goophry_tx.consumer import AtomicTake, Consumer, TakeFactory, take_strategy
from goophry_tx.dashboard.history import HistoryWriter
from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.keys import Keys
from goophry_tx.notify import StatusService, SystemdNotifier
from goophry_tx.outcomes import OutcomeRecorder, TypeCounters, type_counters
from goophry_tx.pausing import PauseWatcher
from goophry_tx.process.runner import ScriptRunner
from goophry_tx.process.spawn import PosixSpawner
from goophry_tx.recovery import HeartbeatService
from goophry_tx.redis import ConnectionError, RedisHealth, RedisLink, Retry
from goophry_tx.reload import ConfigChange, read_again, reload_on_sighup
from goophry_tx.replicas import ReplicaWait
from goophry_tx.schedule import DueEntryMover, RetryTimes
from goophry_tx.stats import Stats, queue_figures
from goophry_tx.store import REMOVE_DELAY, OutcomeStore
from goophry_tx.twistd import exit_zero_after_clean_stop, fail_at_start, on_second_signal

if TYPE_CHECKING:
    from twisted.web.resource import Resource


def instance_name() -> str:
    """A name for this daemon instance: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _failed_ttls(tasks: Iterable[TaskType]) -> dict[str, int]:
    """The FailedTasksTTL of each type that has its own."""
    return {t.type: t.failed_tasks_ttl for t in tasks if t.failed_tasks_ttl is not None}


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


class Phase(Enum):
    """Where the daemon's service is, between its start and its stop."""

    #: Not started, or its start failed (a port could not be had, say).
    IDLE = "idle"
    #: Waiting for Redis, recovering, registering: nothing taken yet.
    STARTING = "starting"
    #: The consumers take entries.
    CONSUMING = "consuming"
    #: Letting running scripts finish and writing outcomes, then disconnecting.
    STOPPING = "stopping"


class GoophryService(MultiService):
    """
    Everything one daemon runs, started and stopped together.

    Its children are the Redis links, the stats server and, once Redis has
    answered, the L{HeartbeatService}.  Starting connects the links; once
    Redis answers, what died on this host is recovered, the heartbeat
    starts (its first beat registers this instance), then the consumers.
    Stopping goes the other way: the consumers first, then the heartbeat,
    then the links.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        verbose: bool = False,
        instance: str | None = None,
        redis_endpoint: IStreamClientEndpoint | None = None,
        links: Callable[[str], RedisLink] | None = None,
        spawner: Callable[[], PosixSpawner] | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        """
        @param reactor: an L{IReactorCore} that is also
            L{IReactorTime<twisted.internet.interfaces.IReactorTime>} and
            L{IReactorThreads<twisted.internet.interfaces.IReactorThreads>}.
        @param links: makes the Redis link of a purpose (C{"control"},
            C{"take:0"}...); by default a L{RedisLink} to RedisAddress, or
            to C{redis_endpoint} when given.
        @param spawner: makes what starts scripts, when the service starts;
            by default a L{PosixSpawner} with two threads.
        """
        super().__init__()
        self.systemd = systemd or SystemdNotifier.from_environment()
        self.config = config
        self._reactor = reactor
        self.verbose = verbose
        self.keys = Keys(config.redis_queue_key)
        self.counters = type_counters(t.type for t in config.tasks)
        self.stats = Stats(reactor, self.counters)

        self.health = RedisHealth(reactor, describe(config), on_back=self.stats.redis_reconnected)
        self.stats.redis_connected = lambda: self.health.connected
        self._links = links or self._redis_links(redis_endpoint or self._redis_endpoint())
        self._spawner = spawner or self._posix_spawner

        self.control = self._link("control")
        #: Per-minute counts of the outcomes, for every dashboard on this Redis.
        self.history = HistoryWriter(self.control, self.keys, reactor)
        self.history.setServiceParent(self)
        #: How many taking links were made: each has a number of its own.
        self._taker_count = 0
        self._takers = {t.type: self._taking_link() for t in config.tasks}
        self.pausing = PauseWatcher(
            self.control, self.keys, self.stats.paused, lambda: self.consumers, reactor
        )
        self._link("pause").subscribe(self.keys.paused_channel, self.pausing)
        self.pausing.setServiceParent(self)
        self.stats.read_queues = lambda: queue_figures(
            self.control, self.keys, [t.type for t in self.config.tasks]
        )
        self._instance = instance
        self.instance = instance or ""
        self.consumers: list[Consumer] = []
        #: The consumers of types a reload removed, until their scripts are done.
        self._retiring: list[Consumer] = []
        #: How the consumers take entries; chosen once the Redis version is known.
        self.take: TakeFactory = AtomicTake
        if config.stats_interface:
            self._stats_service().setServiceParent(self)
        self.phase = Phase.IDLE
        self._stopped_cleanly = False
        #: The start under way, from waiting for Redis to the first beat.
        self._starting: Deferred[None] | None = None
        #: The next try at starting, after one that failed.
        self._retry = Retry(reactor)
        self.status = StatusService(self.systemd, self._status, reactor)

    def _posix_spawner(self) -> PosixSpawner:
        """The default spawner, saying how it starts scripts (C or ctypes differ in cost)."""
        spawner = PosixSpawner(self._reactor, threads=2)
        self.log.info("scripts start through posix_spawn ({backend})", backend=spawner.backend)
        return spawner

    def _link(self, purpose: str) -> RedisLink:
        link = self._links(purpose)
        link.setServiceParent(self)
        return link

    def _taking_link(self) -> RedisLink:
        """A link of its own for a consumer's blocking takes."""
        link = self._link(f"take:{self._taker_count}")
        self._taker_count += 1
        return link

    def _redis_links(self, endpoint: IStreamClientEndpoint) -> Callable[[str], RedisLink]:
        config = self.config

        def link(purpose: str) -> RedisLink:
            return RedisLink(
                self._reactor,
                endpoint,
                self.health,
                name=purpose,
                password=config.redis_password,
                username=config.redis_username,
                db=config.redis_db,
                client_name=f"goophry:{purpose}",
                check=connection_check(endpoint),
            )

        return link

    def _redis_endpoint(self) -> IStreamClientEndpoint:
        return redis_endpoint(self._reactor, self.config)

    def _stats_service(self) -> StreamServerEndpointService:
        # What serves the stats, the dashboard and TLS is imported only when
        # configured: a daemon does not carry the memory of what it does not serve.
        from twisted.web.server import Site

        from goophry_tx.web import StatsResource

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
            from goophry_tx.dashboard.resource import DashboardResource, StatsRouter

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
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from goophry_tx.tls import server_tls_options

            options = server_tls_options(config.stats_tls_cert_file, config.stats_tls_key_file)
            factory = TLSMemoryBIOFactory(options, False, site)
        return fail_at_start(StreamServerEndpointService(endpoint, factory))

    def _build(self) -> None:
        """
        Make what belongs to this process: its name (with its pid), the
        spawning threads, the consumers, the heartbeat.  Done at start, so
        that twistd's fork into the background comes before, not after.
        """
        config, reactor = self.config, self._reactor
        self.instance = self._instance or instance_name()
        self.spawner = self._spawner()
        self.runner = ScriptRunner(self.spawner, reactor, config.output_limit, config.kill_grace)
        # None when 0: no WAIT, and not one more call, on the hot path.
        self.replicas = (
            ReplicaWait(config.redis_wait_replicas) if config.redis_wait_replicas else None
        )
        self.store = OutcomeStore(
            self.control,
            self.keys,
            self.instance,
            config.failed_tasks_ttl,
            reactor,
            failed_ttls=_failed_ttls(config.tasks),
            replicas=self.replicas,
            remove_delay=REMOVE_DELAY,
        )
        self.notifier = ErrorNotifier(
            self.runner,
            config.error_script,
            config.error_queue_size,
            config.error_script_timeout,
        )
        self.mover = DueEntryMover(
            self.control, self.keys, [t.type for t in config.tasks], reactor, verbose=self.verbose
        )
        self.outcomes = OutcomeRecorder(
            tasks=config.tasks,
            counters=self.counters,
            store=self.store,
            notifier=self.notifier,
            retry_times=RetryTimes(reactor, config.retry_backoff_max, self.mover.scheduled),
            history=self.history.count,
            verbose=self.verbose,
        )
        self.consumers = [self._consumer(task_type) for task_type in config.tasks]
        self.heartbeat = HeartbeatService(
            self.control,
            self.keys,
            self.instance,
            [t.type for t in config.tasks],
            reactor,
            config.instance_timeout,
            config.max_recoveries,
            self.outcomes.abandoned,
            on_beat=self.pausing.read,
            on_recovered=self.stats.recovered,
        )

    @property
    def _working(self) -> list[Consumer]:
        """
        The consumers with work in hand: those of the configured types, and
        those of types a reload removed whose scripts still run.
        """
        return [*self.consumers, *self._retiring]

    def _consumer(self, task_type: TaskType) -> Consumer:
        consumer = Consumer(
            task_type=task_type,
            keys=self.keys,
            instance=self.instance,
            blocking=self._takers[task_type.type],
            control=self.control,
            outcomes=self.outcomes,
            runner=self.runner,
            clock=self._reactor,
            verbose=self.verbose,
            block_timeout=self.config.block_timeout,
            replicas=self.replicas,
        )
        if task_type.type in self.stats.paused:
            # A type a reload adds may be paused already.
            consumer.pause()
        return consumer

    def startService(self) -> None:
        self._build()
        super().startService()
        self.phase = Phase.STARTING
        self._stopped_cleanly = False
        exit_zero_after_clean_stop(self._reactor, lambda: self._stopped_cleanly)
        self._begin()
        on_second_signal(
            self._reactor,
            lambda: self.phase is Phase.STOPPING,
            lambda: self._stop_scripts("a second signal"),
        )
        reload_on_sighup(self._reactor, self.reload)
        # twistd starts the service before the reactor runs and handles
        # signals: say that the daemon has started only once it can be
        # stopped cleanly.
        self._reactor.callWhenRunning(self._announce)

    def _announce(self) -> None:
        config = self.config
        self.log.info(
            "Goophry {version} instance {instance}: {types} from Redis {address}, key {key}",
            version=__version__,
            instance=self.instance,
            types=", ".join(f"{t.type} ({t.workers} workers)" for t in config.tasks),
            address=self.health.address,
            key=config.redis_queue_key,
        )
        if self.replicas is not None:
            self.log.info(
                "waiting for {replicas} replicas (WAIT, at most {timeout} ms) after each "
                "take and each outcome (RedisWaitReplicas)",
                replicas=self.replicas.replicas,
                timeout=self.replicas.timeout_ms,
            )
        if config.stats_interface and config.dashboard_pattern:
            scheme = "https" if config.stats_tls_cert_file else "http"
            self.log.info(
                "dashboard at {url} ({access})",
                url=f"{scheme}://{config.stats_interface}{config.dashboard_pattern}",
                access="read-only" if config.dashboard_token is None else "writes need the token",
            )

    def _stop_scripts(self, why: str) -> None:
        """Stop the running scripts now; their entries go back to their queues."""
        self.log.info("{why}: stopping the running scripts now", why=why)
        for consumer in self._working:
            consumer.stop_scripts()

    def _begin(self) -> None:
        """
        Once Redis answers: learn its version, recover what a killed daemon
        on this host left in flight, start the heartbeat, then consume.
        """
        d: Deferred[Any] = self.control.when_connected()
        self._starting = d
        d.addCallback(lambda _: self.control.execute("INFO", "server"))
        d.addCallback(self._check_version)
        d.addCallback(lambda uptime: self.heartbeat.prepare(uptime))
        d.addCallback(self._start_heartbeat)
        d.addCallbacks(self._start_consumers, self._start_failed)

    def _check_version(self, info: bytes) -> float | None:
        """
        Choose how entries are taken (and warn about a Redis without
        BLMOVE); tell how long Redis has been up.
        """
        version = parse_redis_version(info)
        self.take = take_strategy(version)
        if self.take is not AtomicTake:
            self.log.warn(
                "Redis {version} has no BLMOVE (6.2 and newer): falling back to BLPOP, "
                "so a task running when the daemon dies is lost (at most once)",
                version=".".join(map(str, version)),
            )
        return parse_redis_uptime(info)

    def _start_heartbeat(self, _: object) -> Deferred[None]:
        """Register before taking anything: the first beat does it."""
        self.heartbeat.setServiceParent(self)
        return self.heartbeat.when_beating()

    def _start_consumers(self, _: object) -> None:
        self._starting = None
        self.phase = Phase.CONSUMING
        for consumer in self.consumers:
            consumer.start(self.take)
        self.mover.start()
        self.status.ready()
        if self.systemd.address is not None:
            self.status.setServiceParent(self)

    def _status(self) -> str:
        """What C{systemctl status} shows: C{"3 types, 5 running"}."""
        running = sum(c.running for c in self._working)
        if self.phase is Phase.STOPPING:
            return f"stopping, {running} running"
        types = f"{len(self.consumers)} types"
        return f"{types}, {running} running" if running else types

    def _start_failed(self, failure: Failure) -> None:
        self._starting = None
        if self.phase is not Phase.STARTING:
            # Cancelled by a stop.
            return
        if not failure.check(ConnectionError):
            self.log.failure("cannot start consuming; trying again", failure)
        # Whatever the error (unlike a command's L{Retry.later}): the daemon
        # has nothing to do until it has started.  The link comes back by
        # itself; L{_begin} waits for it.
        self._retry.after(0.5, self._begin)

    # Reloading

    def reload(self) -> None:
        """
        SIGHUP: read the configuration again and apply what can change
        while the daemon runs (L{goophry_tx.reload}).  systemd hears
        C{RELOADING=1} before and C{READY=1} after.
        """
        if self.phase in (Phase.STOPPING, Phase.IDLE):
            self.log.info("not reloading the configuration: the daemon is stopping")
            return
        # Before the consumers start, the start's READY=1 is still to come.
        consuming = self.phase is Phase.CONSUMING
        if consuming:
            self.systemd.reloading()
        change = read_again(self.config)
        if change is not None:
            self._apply(change)
        if consuming:
            self.status.ready()

    def _apply(self, change: ConfigChange) -> None:
        """Apply a reload's change to the parts that read each setting."""
        config = self.config = change.config
        self.runner.output_limit = config.output_limit
        self.runner.kill_grace = config.kill_grace
        self.notifier.script = config.error_script
        self.notifier.timeout = config.error_script_timeout
        self.notifier.queue_size = config.error_queue_size
        self.store.failed_ttl = config.failed_tasks_ttl
        # A type a reload adds brings its own FailedTasksTTL; a kept type
        # keeps the one it started with (it needs a restart).
        self.store.failed_ttls = _failed_ttls(config.tasks)
        self.outcomes.configure(config.tasks)
        # A removed type's scheduled entries wait for a daemon that runs it.
        self.mover.set_types([t.type for t in config.tasks])
        changed = {t.type: t for t in change.changed}
        for consumer in self.consumers:
            if consumer.task_type.type in changed:
                consumer.reconfigure(changed[consumer.task_type.type])
        for name in change.removed:
            self._remove_type(name)
        for task_type in change.added:
            self._add_type(task_type)
        self.heartbeat.add_types(t.type for t in change.added)

    def _add_type(self, task_type: TaskType) -> None:
        """Start taking entries of a type a reload added, on a link of its own."""
        name = task_type.type
        # A type added again keeps its counters.
        self.counters.setdefault(name, TypeCounters())
        self._takers[name] = self._taking_link()
        consumer = self._consumer(task_type)
        self.consumers.append(consumer)
        if self.phase is not Phase.CONSUMING:
            # The start starts it with the others.
            return
        # A consumer of this type that a reload removed may still run
        # scripts: the new one would put their in-flight entries back.
        earlier = [c.stop() for c in self._retiring if c.task_type.type == name]
        DeferredList(earlier).addCallback(self._start_added, consumer)

    def _start_added(self, _: object, consumer: Consumer) -> None:
        if self.phase is Phase.CONSUMING and consumer in self.consumers:
            consumer.start(self.take)

    def _remove_type(self, name: str) -> None:
        """
        Stop taking entries of a type a reload removed; its running scripts
        finish and their outcomes are written, then its link goes.
        """
        [consumer] = [c for c in self.consumers if c.task_type.type == name]
        self.consumers.remove(consumer)
        self._retiring.append(consumer)
        link = self._takers.pop(name)
        d = consumer.stop().addCallback(self._retired, consumer, link)
        d.addErrback(lambda f: self.log.failure("cannot close the link of {type}", f, type=name))

    def _retired(self, _: object, consumer: Consumer, link: RedisLink) -> Deferred[None]:
        self._retiring.remove(consumer)
        done: Deferred[None] = link.disownServiceParent()
        return done

    def stopService(self) -> Deferred[None]:
        """
        Stop taking entries at once, let running scripts finish (stopping
        them after ShutdownTimeout), write their outcomes, stop the
        heartbeat, then disconnect.
        """
        if self.phase is Phase.IDLE:
            # Never started (a port could not be had, say).
            d: Deferred[None] = MultiService.stopService(self)
            return d
        self.log.info(
            "stopping: no more entries taken; waiting for {running} running scripts",
            running=sum(c.running for c in self._working),
        )
        self.phase = Phase.STOPPING
        self._retry.cancel()
        if self._starting is not None:
            self._starting.cancel()
        self.systemd.stopping()
        self.mover.stop()
        stopped = DeferredList([c.stop() for c in self._working])
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

        def flushed(unwritten: int) -> Deferred[None] | None:
            if unwritten:
                self.log.warn(
                    "{count} outcomes could not be written to Redis; their entries stay in "
                    "the in-flight lists and will run again",
                    count=unwritten,
                )
                self.heartbeat.keep_registered()
            if self.heartbeat.parent is None:
                # Redis never answered: this instance never registered.
                return None
            # Before the links go: unregistering needs them.
            left: Deferred[None] = self.heartbeat.disownServiceParent()
            return left

        def disconnect(_: object) -> Deferred[None]:
            d: Deferred[None] = MultiService.stopService(self)
            d.addBoth(self._stopped)
            return d

        done: Deferred[Any] = stopped.addCallback(finish)
        done.addCallback(told)
        done.addCallback(flushed)
        done.addCallback(disconnect)
        return done

    def _stopped(self, result: object) -> object:
        """Disconnected: release the spawning threads; the stop was clean."""
        self.spawner.close()
        self.phase = Phase.IDLE
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
