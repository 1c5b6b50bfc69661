"""
Reading and checking the JSON configuration.

Keys are matched case-insensitively, as Go's JSON decoder does, so configs
written for Goophry 1.1.0 load unchanged.  Every problem is reported as a
L{ConfigError} naming the file (as it was given), the setting and what is
wrong with it.  L{check_config} is the whole check a start makes, for the
commands that only check.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from goophry_tx.keys import reserved_type
from goophry_tx.tls import TLSFileError, client_tls_options, server_tls_options

T = TypeVar("T")
N = TypeVar("N", int, float)

#: The values of LogFormat.
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@attrs.frozen
class TaskType:
    """One kind of task: which script runs it and how many at once."""

    type: str
    script: str
    workers: int = 1
    timeout: float = 0.0
    #: Runs after the first that a failing entry gets before it is stored as failed.
    retries: int = 0
    #: Seconds before the second run; each later one waits twice as long.
    retry_backoff: float = 10.0
    #: This type's FailedTasksTTL, when it has its own (0: its failures are not stored).
    failed_tasks_ttl: int | None = None
    #: The names an entry's Env may set; none by default.
    allowed_env: tuple[str, ...] = ()


@attrs.frozen
class Config:
    """The whole configuration, validated, with paths made absolute."""

    path: str
    redis_queue_key: str
    tasks: tuple[TaskType, ...]
    redis_address: str = "127.0.0.1:6379"
    redis_network: str = "tcp"
    redis_password: str | None = attrs.field(default=None, repr=False)
    redis_username: str | None = None
    redis_db: int = 0
    error_script: str | None = None
    failed_tasks_ttl: int = 0
    logfile: str | None = None
    log_format: str = "text"
    stats_interface: str | None = None
    stats_pattern: str = "/"
    stats_tls_cert_file: str | None = None
    stats_tls_key_file: str | None = None
    metrics_pattern: str = "/metrics"
    dashboard_pattern: str | None = None
    dashboard_token: str | None = attrs.field(default=None, repr=False)
    output_limit: int = 65536
    shutdown_timeout: float = 0.0
    kill_grace: float = 5.0
    instance_timeout: float = 15.0
    max_recoveries: int = 3
    block_timeout: float = 10.0
    error_script_timeout: float = 30.0
    error_queue_size: int = 1000
    redis_tls: bool = False
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_server_name: str | None = None
    #: Where to ask for the master, when Sentinel names it (RedisAddress is unused then).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_username: str | None = None
    redis_sentinel_password: str | None = attrs.field(default=None, repr=False)
    redis_wait_replicas: int = 0
    retry_backoff_max: float = 3600.0
    warnings: tuple[str, ...] = ()

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """The TCP host and port of RedisAddress."""
        return split_host_port(self.redis_address, "RedisAddress", self.path)


_TOP_KEYS = (
    "RedisAddress",
    "RedisNetwork",
    "RedisQueueKey",
    "RedisPassword",
    "RedisUsername",
    "RedisDB",
    "Tasks",
    "ErrorScript",
    "FailedTasksTTL",
    "Logfile",
    "LogFormat",
    "StatsInterface",
    "StatsPattern",
    "StatsTLSCertFile",
    "StatsTLSKeyFile",
    "MetricsPattern",
    "DashboardPattern",
    "DashboardToken",
    "OutputLimit",
    "ShutdownTimeout",
    "KillGrace",
    "InstanceTimeout",
    "MaxRecoveries",
    "BlockTimeout",
    "ErrorScriptTimeout",
    "ErrorQueueSize",
    "RedisTLS",
    "RedisTLSCAFile",
    "RedisTLSCertFile",
    "RedisTLSKeyFile",
    "RedisTLSServerName",
    "RedisSentinels",
    "RedisSentinelMaster",
    "RedisSentinelUsername",
    "RedisSentinelPassword",
    "RedisWaitReplicas",
    "RetryBackoffMax",
)
_TASK_KEYS = (
    "Type",
    "Script",
    "Workers",
    "Timeout",
    "Retries",
    "RetryBackoff",
    "FailedTasksTTL",
    "AllowedEnv",
)


def setting_name(field: str) -> str:
    """
    The name a setting has in the file, from its attribute's name in
    L{Config} or L{TaskType} (C{redis_db} is C{RedisDB}).
    """
    folded = field.replace("_", "")
    for key in (*_TOP_KEYS, *_TASK_KEYS):
        if key.lower() == folded:
            return key
    return field


def _describe(value: object) -> str:
    """Show a JSON value the way the error messages quote it."""
    return json.dumps(value, ensure_ascii=False)


class _Reader:
    """
    Looks up keys case-insensitively in one JSON object and checks types,
    naming the setting in every error.
    """

    def __init__(
        self, source: str, where: str, obj: Mapping[str, Any], known: tuple[str, ...]
    ) -> None:
        self.source = source
        self.where = where
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []
        folded = {k.lower(): k for k in known}
        for key, value in obj.items():
            name = folded.get(key.lower())
            if name is None:
                near = difflib.get_close_matches(key.lower(), folded, n=1, cutoff=0.6)
                hint = f"; did you mean {folded[near[0]]}?" if near else ""
                self.warnings.append(f"{self.source}: {self.where}{key}: unknown setting{hint}")
                continue
            # As in Go's decoder, every spelling sets the same setting: the last one wins.
            self.values[name] = value

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}{name}: {problem}")

    def get(self, name: str, check: Callable[[_Reader, str, Any], T], default: T) -> T:
        if name not in self.values or self.values[name] is None:
            return default
        return check(self, name, self.values[name])

    def require(self, name: str, check: Callable[[_Reader, str, Any], T]) -> T:
        if name not in self.values or self.values[name] is None:
            raise self.fail(name, "required, but missing")
        return check(self, name, self.values[name])


def _secret(reader: _Reader, name: str, value: Any) -> str:
    """A string never shown in a message: only its kind is named."""
    if not isinstance(value, str):
        kind = "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}"
        raise reader.fail(name, f"expected a string, got {kind}")
    return value


def _boolean(reader: _Reader, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise reader.fail(name, f"expected true or false, got {_describe(value)}")
    return value


def _string(reader: _Reader, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise reader.fail(name, f"expected a string, got {_describe(value)}")
    return value


def _nonempty(reader: _Reader, name: str, value: Any) -> str:
    text = _string(reader, name, value)
    if not text:
        raise reader.fail(name, "must not be empty")
    return text


def _integer(reader: _Reader, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise reader.fail(name, f"expected an integer, got {_describe(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise reader.fail(name, f"expected an integer, got {_describe(value)}")
        return int(value)
    return int(value)


def _nonnegative_integer(reader: _Reader, name: str, value: Any) -> int:
    number = _integer(reader, name, value)
    if number < 0:
        raise reader.fail(name, f"must be 0 or more, got {number}")
    return number


def _ttl(reader: _Reader, name: str, value: Any) -> int:
    number = _nonnegative_integer(reader, name, value)
    if number > 2**31 - 1:
        raise reader.fail(name, f"at most {2**31 - 1} seconds, got {number}")
    return number


def _positive_integer(reader: _Reader, name: str, value: Any) -> int:
    number = _integer(reader, name, value)
    if number < 1:
        raise reader.fail(name, f"must be 1 or more, got {number}")
    return number


def _seconds(reader: _Reader, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise reader.fail(name, f"expected a number of seconds, got {_describe(value)}")
    if value < 0:
        raise reader.fail(name, f"must be 0 or more seconds, got {_describe(value)}")
    return float(value)


def _at_least(reader: _Reader, name: str, value: N, least: N, unit: str = "") -> N:
    """
    Raise C{value} to C{least}, as the original does, with a warning that
    says so.
    """
    if value < least:
        reader.warnings.append(
            f"{reader.source}: {reader.where}{name}: {_describe(value)} is below "
            f"{_describe(least)}{unit}; using {_describe(least)}"
        )
        return least
    return value


def split_host_port(address: str, name: str, source: str) -> tuple[str, int]:
    """
    Split C{host:port} (or C{[v6]:port}) as Go's net.SplitHostPort does.

    @raise ConfigError: naming C{name} when it is not of that form.
    """
    scheme, has_scheme, _ = address.partition("://")
    if has_scheme:
        raise ConfigError(
            f"{source}: {name}: expected host:port without a scheme "
            f"(no {_describe(scheme + '://')}), got {_describe(address)}"
        )
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{source}: {name}: expected host:port, got {_describe(address)}")
    if not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"{source}: {name}: port {int(port_text)} is out of range (1 to 65535), "
            f"got {_describe(address)}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(
            f"{source}: {name}: an IPv6 address needs brackets, as in [::1]:port, "
            f"got {_describe(address)}"
        )
    return host, int(port_text)


def _resolve(base: str, path: str) -> str:
    """Make a path from the config absolute, relative to the config's folder."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _resolve_script(base: str, script: str) -> str:
    """
    Find a script: paths are taken relative to the config's folder; a bare
    command name not found there is looked up on PATH, as Go's exec does.
    """
    if os.sep in script:
        return _resolve(base, script)
    local = os.path.join(base, script)
    if os.path.exists(local):
        return local
    found = shutil.which(script)
    return found if found is not None else local


def _check_executable(reader: _Reader, name: str, path: str) -> None:
    if not os.path.exists(path):
        raise reader.fail(name, f"{path}: no such file")
    if os.path.isdir(path):
        raise reader.fail(name, f"{path}: is a directory")
    if not os.access(path, os.X_OK):
        raise reader.fail(name, f"{path}: not executable (chmod +x?)")


def _check_readable(reader: _Reader, name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise reader.fail(name, f"{path}: cannot read: {e.strerror}") from None


def _read_task(source: str, base: str, index: int, raw: Any) -> tuple[TaskType, list[str]]:
    where = f"Tasks[{index}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: Tasks[{index}]: expected an object, got {_describe(raw)}")
    reader = _Reader(source, where, raw, _TASK_KEYS)
    type_name = reader.require("Type", _nonempty)
    if reserved_type(type_name):
        raise reader.fail("Type", f"{_describe(type_name)} would collide with a key of the daemon")
    script = _resolve_script(base, reader.require("Script", _nonempty))
    _check_executable(reader, "Script", script)
    # The original treats anything below 1 as 1.
    workers = _at_least(reader, "Workers", reader.get("Workers", _integer, 1), 1)
    timeout = reader.get("Timeout", _seconds, 0.0)
    retries = reader.get("Retries", _nonnegative_integer, 0)
    backoff = reader.get("RetryBackoff", _seconds, 10.0)
    ttl: int | None = reader.get("FailedTasksTTL", _ttl, None)
    none_allowed: tuple[str, ...] = ()
    allowed_env = reader.get("AllowedEnv", _env_names, none_allowed)
    task = TaskType(type_name, script, workers, timeout, retries, backoff, ttl, allowed_env)
    return task, reader.warnings


#: Environment variable names that are portable (POSIX).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: What the dynamic loader (glibc's ld.so, macOS's dyld) acts on beyond the
#: names that start with C{LD_} or C{DYLD_}.
_LOADER_NAMES = frozenset({"GCONV_PATH", "GLIBC_TUNABLES", "MALLOC_TRACE", "NLSPATH", "LOCPATH"})


def loader_variable(name: str) -> bool:
    """
    Whether the dynamic loader reads C{name}: never allowed in an entry's
    Env, since it would let a producer run code of its choosing in a script.
    """
    return name.startswith(("LD_", "DYLD_")) or name in _LOADER_NAMES


def env_name(name: str) -> bool:
    """Whether C{name} is a portable environment variable name."""
    return _ENV_NAME.match(name) is not None


def _env_names(reader: _Reader, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise reader.fail(name, f"expected an array of names, got {_describe(value)}")
    for variable in value:
        if not env_name(variable):
            raise reader.fail(name, f"{_describe(variable)} is not a valid environment name")
        if loader_variable(variable):
            raise reader.fail(
                name, f"{variable} is a dynamic-loader variable: never allowed from an entry"
            )
    return tuple(value)


def _read_sentinels(reader: _Reader, network: str) -> dict[str, Any]:
    """RedisSentinels and the settings that go with it, as L{Config} fields."""
    raw: Any = reader.get("RedisSentinels", lambda r, n, v: v, [])
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise reader.fail("RedisSentinels", f"expected an array of host:port, got {_describe(raw)}")
    sentinels = tuple(
        split_host_port(address, f"RedisSentinels[{index}]", reader.source)
        for index, address in enumerate(raw)
    )
    master = reader.get("RedisSentinelMaster", _nonempty, "") or None
    username = reader.get("RedisSentinelUsername", _string, "") or None
    password = reader.get("RedisSentinelPassword", _secret, "") or None
    if sentinels:
        if network != "tcp":
            raise reader.fail("RedisSentinels", "Sentinel needs RedisNetwork tcp")
        if master is None:
            raise reader.fail("RedisSentinelMaster", "required with RedisSentinels, but missing")
    else:
        given = [
            name
            for name, value in (
                ("RedisSentinelMaster", master),
                ("RedisSentinelUsername", username),
                ("RedisSentinelPassword", password),
            )
            if value is not None
        ]
        if given:
            raise reader.fail(given[0], "set, but RedisSentinels is empty")
    return {
        "redis_sentinels": sentinels,
        "redis_sentinel_master": master,
        "redis_sentinel_username": username,
        "redis_sentinel_password": password,
    }


def _read_redis_tls(reader: _Reader, base: str, network: str, host: str) -> dict[str, Any]:
    """
    RedisTLS and its files, as L{Config} fields; the files are read and
    checked now, so that a bad one stops the daemon at start.

    @param host: the name a certificate would be checked against, when
        RedisTLSServerName does not give one.
    """
    enabled = reader.get("RedisTLS", _boolean, False)
    files = {
        name: _resolve(base, path) if path else None
        for name in ("RedisTLSCAFile", "RedisTLSCertFile", "RedisTLSKeyFile")
        for path in [reader.get(name, _string, "")]
    }
    server_name = reader.get("RedisTLSServerName", _string, "") or None
    if not enabled:
        given = [name for name, path in files.items() if path is not None]
        if server_name is not None:
            given.append("RedisTLSServerName")
        if given:
            raise reader.fail(given[0], "set, but RedisTLS is not true")
        return {}
    if network != "tcp":
        raise reader.fail("RedisTLS", "Redis serves TLS over tcp only, and RedisNetwork is unix")
    ca, cert, key = files["RedisTLSCAFile"], files["RedisTLSCertFile"], files["RedisTLSKeyFile"]
    if (cert is None) != (key is None):
        missing = "RedisTLSKeyFile" if key is None else "RedisTLSCertFile"
        raise reader.fail(
            missing, "a client certificate needs both RedisTLSCertFile and RedisTLSKeyFile"
        )
    for name, path in files.items():
        if path is not None:
            _check_readable(reader, name, path)
    # Parse them now: a bad file or a mismatched pair is refused at start.
    try:
        client_tls_options(server_name or host, ca, cert, key)
    except TLSFileError as e:
        raise reader.fail(e.setting, f"{e.path}: {e.problem}") from None
    return {
        "redis_tls": True,
        "redis_tls_ca_file": ca,
        "redis_tls_cert_file": cert,
        "redis_tls_key_file": key,
        "redis_tls_server_name": server_name,
    }


def parse_config(source: str, data: Any, base: str) -> Config:
    """
    Check a decoded JSON document and build a L{Config}.

    @param source: the file name, used in messages.
    @param base: the folder that relative paths are taken from.
    @raise ConfigError: when anything is wrong.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    reader = _Reader(source, "", data, _TOP_KEYS)

    network = reader.get("RedisNetwork", _string, "tcp")
    if network not in ("tcp", "unix"):
        raise reader.fail("RedisNetwork", f'expected "tcp" or "unix", got {_describe(network)}')
    address = reader.get("RedisAddress", _nonempty, "127.0.0.1:6379")
    if network == "tcp":
        split_host_port(address, "RedisAddress", source)
    else:
        address = _resolve(base, address)

    sentinels = _read_sentinels(reader, network)
    if sentinels["redis_sentinels"]:
        tls_host = sentinels["redis_sentinels"][0][0]
    else:
        tls_host = split_host_port(address, "RedisAddress", source)[0] if network == "tcp" else ""
    redis_tls = _read_redis_tls(reader, base, network, tls_host)

    queue_key = reader.require("RedisQueueKey", _nonempty)

    raw_tasks = reader.require("Tasks", lambda r, n, v: v)
    if not isinstance(raw_tasks, list):
        raise reader.fail("Tasks", f"expected an array of tasks, got {_describe(raw_tasks)}")
    if not raw_tasks:
        raise reader.fail("Tasks", "at least one task type is needed")
    tasks = []
    task_warnings: list[str] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_tasks):
        task, warned = _read_task(source, base, index, raw)
        if task.type in seen:
            raise ConfigError(
                f"{source}: Tasks[{index}].Type: {_describe(task.type)} "
                f"is already used by Tasks[{seen[task.type]}]"
            )
        seen[task.type] = index
        tasks.append(task)
        task_warnings.extend(warned)

    error_script = reader.get("ErrorScript", _string, "") or None
    if error_script is not None:
        error_script = _resolve_script(base, error_script)
        _check_executable(reader, "ErrorScript", error_script)

    logfile = reader.get("Logfile", _string, "") or None
    if logfile is not None:
        logfile = _resolve(base, logfile)
    log_format = reader.get("LogFormat", _string, "text")
    if log_format not in LOG_FORMATS:
        raise reader.fail("LogFormat", f'expected "text" or "json", got {_describe(log_format)}')

    stats_interface = reader.get("StatsInterface", _string, "") or None
    if stats_interface is not None:
        split_host_port(stats_interface, "StatsInterface", source)
    stats_pattern = reader.get("StatsPattern", _nonempty, "/")
    metrics_pattern = reader.get("MetricsPattern", _nonempty, "/metrics")
    for name, pattern in (("StatsPattern", stats_pattern), ("MetricsPattern", metrics_pattern)):
        if not pattern.startswith("/"):
            raise reader.fail(name, f'must start with "/", got {_describe(pattern)}')
    if metrics_pattern == stats_pattern:
        raise reader.fail("MetricsPattern", f"is StatsPattern too: {_describe(stats_pattern)}")

    dashboard_pattern = reader.get("DashboardPattern", _string, "") or None
    if dashboard_pattern is not None:
        # Its pages live below it, so it is always a subtree pattern.
        if not dashboard_pattern.startswith("/") or not dashboard_pattern.endswith("/"):
            raise reader.fail(
                "DashboardPattern",
                f'must start and end with "/", got {_describe(dashboard_pattern)}',
            )
        if dashboard_pattern in (stats_pattern, metrics_pattern):
            raise reader.fail(
                "DashboardPattern", f"is already served: {_describe(dashboard_pattern)}"
            )
    dashboard_token = reader.get("DashboardToken", _secret, "") or None

    cert = reader.get("StatsTLSCertFile", _string, "") or None
    key = reader.get("StatsTLSKeyFile", _string, "") or None
    if (cert is None) != (key is None):
        missing = "StatsTLSKeyFile" if key is None else "StatsTLSCertFile"
        raise reader.fail(missing, "both StatsTLSCertFile and StatsTLSKeyFile are needed for HTTPS")
    if cert is not None and key is not None:
        cert, key = _resolve(base, cert), _resolve(base, key)
        _check_readable(reader, "StatsTLSCertFile", cert)
        _check_readable(reader, "StatsTLSKeyFile", key)
        # Parse them now: a bad or mismatched pair is refused at start.
        try:
            server_tls_options(cert, key)
        except TLSFileError as e:
            raise reader.fail(e.setting, f"{e.path}: {e.problem}") from None

    return Config(
        path=source,
        redis_queue_key=queue_key,
        tasks=tuple(tasks),
        redis_address=address,
        redis_network=network,
        redis_password=reader.get("RedisPassword", _secret, "") or None,
        redis_username=reader.get("RedisUsername", _string, "") or None,
        redis_db=reader.get("RedisDB", _nonnegative_integer, 0),
        error_script=error_script,
        failed_tasks_ttl=reader.get("FailedTasksTTL", _ttl, 0),
        logfile=logfile,
        log_format=log_format,
        stats_interface=stats_interface,
        stats_pattern=stats_pattern,
        stats_tls_cert_file=cert,
        stats_tls_key_file=key,
        metrics_pattern=metrics_pattern,
        dashboard_pattern=dashboard_pattern,
        dashboard_token=dashboard_token,
        output_limit=reader.get("OutputLimit", _positive_integer, 65536),
        shutdown_timeout=reader.get("ShutdownTimeout", _seconds, 0.0),
        kill_grace=reader.get("KillGrace", _seconds, 5.0),
        instance_timeout=_at_least(
            reader, "InstanceTimeout", reader.get("InstanceTimeout", _seconds, 15.0), 1.0, "s"
        ),
        max_recoveries=reader.get("MaxRecoveries", _positive_integer, 3),
        block_timeout=_at_least(
            reader, "BlockTimeout", reader.get("BlockTimeout", _seconds, 10.0), 0.1, "s"
        ),
        error_script_timeout=reader.get("ErrorScriptTimeout", _seconds, 30.0),
        error_queue_size=reader.get("ErrorQueueSize", _positive_integer, 1000),
        redis_wait_replicas=reader.get("RedisWaitReplicas", _nonnegative_integer, 0),
        **sentinels,
        **redis_tls,
        retry_backoff_max=reader.get("RetryBackoffMax", _seconds, 3600.0),
        # Last, so that the warnings of the values coerced above are in.
        warnings=(*reader.warnings, *task_warnings),
    )


def load_config(path: str) -> Config:
    """
    Read and check the configuration file at C{path}.

    @raise ConfigError: when it cannot be read or anything in it is wrong.
    """
    # Messages name the file as the user gave it, so that it can be found.
    source = path
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the configuration: {e.strerror}") from None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from None
    base = os.path.dirname(os.path.abspath(path))
    return parse_config(source, data, base)


def check_config(path: str, logfile: str | None = None) -> Config:
    """
    Everything a start checks before it talks to Redis: the file and its
    settings, the scripts and the TLS files (L{load_config}), and that the
    log file can be appended to.

    @param logfile: the log file given on the command line, which wins over
        the config's C{Logfile}.
    @raise ConfigError: with the message a start prints.
    """
    config = load_config(path)
    if logfile is not None:
        _check_appendable("-l", logfile)
    elif config.logfile is not None:
        _check_appendable(f"{config.path}: Logfile", config.logfile)
    return config


def _check_appendable(where: str, path: str) -> None:
    """
    Check that C{path} can be opened for append (as an existing file, or a
    new one in an existing folder) without creating it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        problem = "is a directory"
    elif os.path.exists(path):
        problem = "" if os.access(path, os.W_OK) else "not writable"
    elif not os.path.isdir(folder):
        problem = f"no such directory: {folder}"
    else:
        problem = "" if os.access(folder, os.W_OK | os.X_OK) else f"cannot create it in {folder}"
    if problem:
        raise ConfigError(f"{where}: {path}: {problem}")
