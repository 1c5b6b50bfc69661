"""goophry_tx.config: every bad configuration is refused with a message that names it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trustme

from goophry_tx.config import Config, ConfigError, check_config, load_config
from tests.helpers import write_config, write_script

NAME = "goophry.config.json"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path, so that the config's name as given is L{NAME}."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    return write_script(tmp_path, "task.sh", "exit 0")


def load(directory: Path, **settings: Any) -> Config:
    """Write a config into C{directory} and load it by its path from the current directory."""
    settings.setdefault("RedisQueueKey", "q")
    return load_config(os.path.relpath(write_config(directory, **settings)))


def refused(directory: Path, **settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(directory, **settings)
    return str(info.value)


def task(script: Path, **settings: Any) -> dict[str, Any]:
    return {"Type": "t", "Script": str(script), **settings}


# Valid configs


def test_minimal_config_gets_the_originals_defaults(tmp_path: Path, script: Path) -> None:
    config = load(tmp_path, Tasks=[{"Type": "t", "Script": str(script)}])
    assert config.redis_queue_key == "q"
    assert config.redis_address == "127.0.0.1:6379"
    assert config.redis_network == "tcp"
    assert [(t.type, t.script, t.workers, t.timeout) for t in config.tasks] == [
        ("t", str(script), 1, 0.0)
    ]
    assert config.failed_tasks_ttl == 0
    assert config.error_script is None
    assert config.logfile is None
    assert config.stats_interface is None
    assert config.stats_pattern == "/"
    assert config.output_limit == 65536
    assert config.warnings == ()


def test_keys_match_case_insensitively(tmp_path: Path, script: Path) -> None:
    path = tmp_path / NAME
    path.write_text(
        json.dumps(
            {
                "redisqueuekey": "lower",
                "REDISADDRESS": "10.0.0.1:6380",
                "failedtasksttl": 60,
                "tasks": [{"type": "t", "script": str(script), "workers": 3, "TIMEOUT": 2.5}],
            }
        )
    )
    config = load_config(str(path))
    assert config.redis_queue_key == "lower"
    assert config.redis_address == "10.0.0.1:6380"
    assert config.failed_tasks_ttl == 60
    assert (config.tasks[0].type, config.tasks[0].workers, config.tasks[0].timeout) == (
        "t",
        3,
        2.5,
    )
    assert config.warnings == ()


def test_a_repeated_key_takes_the_last_value_as_go_does(tmp_path: Path, script: Path) -> None:
    # Go's decoder maps each key to its field (exact or folded) and decodes
    # every one in turn, so the last one in the document wins.
    path = tmp_path / NAME
    path.write_text(
        '{"RedisQueueKey": "first", "redisqueuekey": "second", '
        f'"Tasks": [{{"Type": "t", "Script": {json.dumps(str(script))}}}]}}'
    )
    assert load_config(str(path)).redis_queue_key == "second"


@pytest.mark.parametrize("workers, expected", [(0, 1), (-3, 1), (1, 1), (4, 4), (2.0, 2)])
def test_workers_below_one_mean_one(
    tmp_path: Path, script: Path, workers: float, expected: int
) -> None:
    config = load(tmp_path, Tasks=[task(script, Workers=workers)])
    assert config.tasks[0].workers == expected


def test_values_raised_to_their_least_are_warned_about(tmp_path: Path, script: Path) -> None:
    config = load(
        tmp_path,
        Tasks=[task(script, Workers=-5)],
        InstanceTimeout=0.5,
        BlockTimeout=0,
        Colour="blue",
    )
    assert (config.tasks[0].workers, config.instance_timeout, config.block_timeout) == (
        1,
        1.0,
        0.1,
    )
    assert config.warnings == (
        f"{NAME}: Colour: unknown setting",
        f"{NAME}: InstanceTimeout: 0.5 is below 1.0s; using 1.0",
        f"{NAME}: BlockTimeout: 0.0 is below 0.1s; using 0.1",
        f"{NAME}: Tasks[0].Workers: -5 is below 1; using 1",
    )


def test_values_at_their_least_are_not_warned_about(tmp_path: Path, script: Path) -> None:
    config = load(tmp_path, Tasks=[task(script, Workers=1)], InstanceTimeout=1, BlockTimeout=0.1)
    assert config.warnings == ()


def test_log_format_is_text_unless_json_is_asked_for(tmp_path: Path, script: Path) -> None:
    assert load(tmp_path, Tasks=[task(script)]).log_format == "text"
    assert load(tmp_path, Tasks=[task(script)], logformat="json").log_format == "json"


@pytest.mark.parametrize("given", ["relative", "absolute", "dotted"])
def test_messages_name_the_file_as_it_was_given(tmp_path: Path, given: str) -> None:
    path = write_config(tmp_path / "etc", RedisQueueKey="q", Tasks=[])
    name = {
        "relative": os.path.join("etc", NAME),
        "absolute": str(path),
        "dotted": os.path.join(".", "etc", "..", "etc", NAME),
    }[given]
    with pytest.raises(ConfigError) as info:
        load_config(name)
    assert str(info.value) == f"{name}: Tasks: at least one task type is needed"


def test_unknown_keys_are_warned_about_with_the_nearest_known_name(
    tmp_path: Path, script: Path
) -> None:
    config = load(
        tmp_path,
        RedisAdress="127.0.0.1:1",
        failedtaskttl=5,
        Colour="blue",
        Tasks=[task(script, Wrokers=2)],
    )
    assert config.warnings == (
        f"{NAME}: RedisAdress: unknown setting; did you mean RedisAddress?",
        f"{NAME}: failedtaskttl: unknown setting; did you mean FailedTasksTTL?",
        f"{NAME}: Colour: unknown setting",
        f"{NAME}: Tasks[0].Wrokers: unknown setting; did you mean Workers?",
    )
    # The misspelt settings were not taken.
    assert config.redis_address == "127.0.0.1:6379"
    assert config.failed_tasks_ttl == 0
    assert config.tasks[0].workers == 1


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    write_script(conf / "bin", "task.sh", "exit 0")
    write_script(conf, "bare.sh", "exit 0")
    write_script(conf / "bin", "err.sh", "exit 0")
    (conf / "tls").mkdir()
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(conf / "tls" / "c.pem"))
    leaf.private_key_pem.write_to_path(str(conf / "tls" / "k.pem"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load(
        conf,
        Tasks=[{"Type": "a", "Script": "bin/task.sh"}, {"Type": "b", "Script": "bare.sh"}],
        ErrorScript="./bin/err.sh",
        Logfile="log/goophry.log",
        StatsTLSCertFile="tls/c.pem",
        StatsTLSKeyFile="tls/../tls/k.pem",
    )
    assert [t.script for t in config.tasks] == [
        str(conf / "bin" / "task.sh"),
        str(conf / "bare.sh"),
    ]
    assert config.error_script == str(conf / "bin" / "err.sh")
    assert config.logfile == str(conf / "log" / "goophry.log")
    assert config.stats_tls_cert_file == str(conf / "tls" / "c.pem")
    assert config.stats_tls_key_file == str(conf / "tls" / "k.pem")


def test_a_relative_config_path_resolves_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(tmp_path / "conf", "task.sh", "exit 0")
    write_config(tmp_path / "conf", RedisQueueKey="q", Tasks=[{"Type": "t", "Script": "task.sh"}])
    monkeypatch.chdir(tmp_path)
    config = load_config(os.path.join("conf", NAME))
    assert config.tasks[0].script == str(tmp_path / "conf" / "task.sh")


def test_a_unix_socket_address_resolves_against_the_config_directory(
    tmp_path: Path, script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    config = load(
        tmp_path, RedisNetwork="unix", RedisAddress="run/redis.sock", Tasks=[task(script)]
    )
    assert config.redis_address == str(tmp_path / "run" / "redis.sock")


# Bad configs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration: No such file"):
        load_config(str(tmp_path / "absent.json"))


@pytest.mark.parametrize("text", ["", "{", "{'RedisQueueKey': 'q'}", '{"a": 1} x', "\xff"])
def test_not_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / NAME
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{NAME}: not valid JSON: "):
        load_config(NAME)


def test_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_config(NAME)
    assert str(info.value) == f"{NAME}: expected a JSON object, got list"


def test_workers_not_an_integer_names_the_task(tmp_path: Path, script: Path) -> None:
    message = refused(tmp_path, Tasks=[task(script), {**task(script, Workers="two"), "Type": "u"}])
    assert message == f'{NAME}: Tasks[1].Workers: expected an integer, got "two"'


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"RedisQueueKey": None}, "RedisQueueKey: required, but missing"),
        ({"RedisQueueKey": ""}, "RedisQueueKey: must not be empty"),
        ({"RedisQueueKey": 5}, "RedisQueueKey: expected a string, got 5"),
        ({"Tasks": None}, "Tasks: required, but missing"),
        ({"Tasks": []}, "Tasks: at least one task type is needed"),
        ({"Tasks": {"Type": "t"}}, 'Tasks: expected an array of tasks, got {"Type": "t"}'),
        ({"Tasks": ["t"]}, 'Tasks[0]: expected an object, got "t"'),
        ({"Tasks": [{"Script": "x"}]}, "Tasks[0].Type: required, but missing"),
        ({"Tasks": [{"Type": ""}]}, "Tasks[0].Type: must not be empty"),
        ({"Tasks": [{"Type": "t"}]}, "Tasks[0].Script: required, but missing"),
        ({"RedisAddress": "localhost"}, 'RedisAddress: expected host:port, got "localhost"'),
        ({"RedisAddress": "host:port"}, 'RedisAddress: expected host:port, got "host:port"'),
        (
            {"RedisAddress": "host:70000"},
            'RedisAddress: port 70000 is out of range (1 to 65535), got "host:70000"',
        ),
        (
            {"RedisAddress": "redis://127.0.0.1:6379"},
            'RedisAddress: expected host:port without a scheme (no "redis://"), '
            'got "redis://127.0.0.1:6379"',
        ),
        (
            {"StatsInterface": "127.0.0.1:0"},
            'StatsInterface: port 0 is out of range (1 to 65535), got "127.0.0.1:0"',
        ),
        ({"LogFormat": "xml"}, 'LogFormat: expected "text" or "json", got "xml"'),
        (
            {"RedisAddress": "::1:6379"},
            'RedisAddress: an IPv6 address needs brackets, as in [::1]:port, got "::1:6379"',
        ),
        ({"RedisNetwork": "udp"}, 'RedisNetwork: expected "tcp" or "unix", got "udp"'),
        ({"FailedTasksTTL": -1}, "FailedTasksTTL: must be 0 or more, got -1"),
        ({"FailedTasksTTL": "60"}, 'FailedTasksTTL: expected an integer, got "60"'),
        ({"FailedTasksTTL": 1.5}, "FailedTasksTTL: expected an integer, got 1.5"),
        ({"FailedTasksTTL": True}, "FailedTasksTTL: expected an integer, got true"),
        ({"ErrorScript": 3}, "ErrorScript: expected a string, got 3"),
        ({"Logfile": ["x"]}, 'Logfile: expected a string, got ["x"]'),
        ({"StatsInterface": "8080"}, 'StatsInterface: expected host:port, got "8080"'),
        ({"StatsPattern": "stats"}, 'StatsPattern: must start with "/", got "stats"'),
        ({"MetricsPattern": ""}, "MetricsPattern: must not be empty"),
        # The settings this project adds, each with a wrong type.
        # A password is never echoed, not even a wrong one.
        ({"RedisPassword": 1234}, "RedisPassword: expected a string, got a number"),
        ({"RedisPassword": ["s3cr3t"]}, "RedisPassword: expected a string, got a list"),
        ({"RedisUsername": False}, "RedisUsername: expected a string, got false"),
        ({"RedisDB": "1"}, 'RedisDB: expected an integer, got "1"'),
        ({"RedisDB": -1}, "RedisDB: must be 0 or more, got -1"),
        ({"MetricsPattern": 9}, "MetricsPattern: expected a string, got 9"),
        ({"OutputLimit": "64k"}, 'OutputLimit: expected an integer, got "64k"'),
        ({"OutputLimit": 0}, "OutputLimit: must be 1 or more, got 0"),
        (
            {"ShutdownTimeout": "30s"},
            'ShutdownTimeout: expected a number of seconds, got "30s"',
        ),
        ({"ShutdownTimeout": -1}, "ShutdownTimeout: must be 0 or more seconds, got -1"),
        ({"KillGrace": None, "killgrace": {}}, "KillGrace: expected a number of seconds, got {}"),
        ({"InstanceTimeout": True}, "InstanceTimeout: expected a number of seconds, got true"),
        ({"MaxRecoveries": 2.5}, "MaxRecoveries: expected an integer, got 2.5"),
        ({"MaxRecoveries": 0}, "MaxRecoveries: must be 1 or more, got 0"),
        ({"BlockTimeout": "10"}, 'BlockTimeout: expected a number of seconds, got "10"'),
        ({"ErrorScriptTimeout": -5}, "ErrorScriptTimeout: must be 0 or more seconds, got -5"),
        ({"ErrorQueueSize": "many"}, 'ErrorQueueSize: expected an integer, got "many"'),
    ],
)
def test_bad_settings_are_named(
    tmp_path: Path, script: Path, settings: dict[str, Any], message: str
) -> None:
    settings = {"Tasks": [task(script)], **settings}
    assert refused(tmp_path, **settings) == f"{NAME}: {message}"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"Timeout": "1m"}, 'Tasks[0].Timeout: expected a number of seconds, got "1m"'),
        ({"Timeout": -2}, "Tasks[0].Timeout: must be 0 or more seconds, got -2"),
        ({"Workers": 1.5}, "Tasks[0].Workers: expected an integer, got 1.5"),
        ({"Workers": True}, "Tasks[0].Workers: expected an integer, got true"),
        ({"Type": 7}, "Tasks[0].Type: expected a string, got 7"),
        ({"Type": "t:failed"}, 'Tasks[0].Type: "t:failed" would collide with a key of the daemon'),
    ],
)
def test_bad_task_settings_are_named(
    tmp_path: Path, script: Path, settings: dict[str, Any], message: str
) -> None:
    assert refused(tmp_path, Tasks=[task(script, **settings)]) == f"{NAME}: {message}"


def test_duplicate_type(tmp_path: Path, script: Path) -> None:
    message = refused(
        tmp_path, Tasks=[task(script), {"Type": "u", "Script": str(script)}, task(script)]
    )
    assert message == f'{NAME}: Tasks[2].Type: "t" is already used by Tasks[0]'


def test_missing_script(tmp_path: Path) -> None:
    message = refused(tmp_path, Tasks=[{"Type": "t", "Script": "nope.sh"}])
    assert message == f"{NAME}: Tasks[0].Script: {tmp_path / 'nope.sh'}: no such file"


def test_non_executable_script(tmp_path: Path, script: Path) -> None:
    script.chmod(0o644)
    message = refused(tmp_path, Tasks=[task(script)])
    assert message == f"{NAME}: Tasks[0].Script: {script}: not executable (chmod +x?)"


def test_script_that_is_a_directory(tmp_path: Path) -> None:
    message = refused(tmp_path, Tasks=[{"Type": "t", "Script": str(tmp_path)}])
    assert message == f"{NAME}: Tasks[0].Script: {tmp_path}: is a directory"


def test_missing_error_script(tmp_path: Path, script: Path) -> None:
    message = refused(tmp_path, Tasks=[task(script)], ErrorScript="./err.sh")
    assert message == f"{NAME}: ErrorScript: {tmp_path / 'err.sh'}: no such file"


@pytest.mark.parametrize(
    "given, missing",
    [("StatsTLSCertFile", "StatsTLSKeyFile"), ("StatsTLSKeyFile", "StatsTLSCertFile")],
)
def test_only_one_tls_file(tmp_path: Path, script: Path, given: str, missing: str) -> None:
    (tmp_path / "f.pem").write_text("x")
    message = refused(tmp_path, Tasks=[task(script)], **{given: "f.pem"})
    assert message == (
        f"{NAME}: {missing}: both StatsTLSCertFile and StatsTLSKeyFile are needed for HTTPS"
    )


@pytest.mark.parametrize("broken", ["StatsTLSCertFile", "StatsTLSKeyFile"])
def test_unreadable_tls_file(tmp_path: Path, script: Path, broken: str) -> None:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    files = {"StatsTLSCertFile": "c.pem", "StatsTLSKeyFile": "k.pem", broken: "gone.pem"}
    message = refused(tmp_path, Tasks=[task(script)], **files)
    assert message == (
        f"{NAME}: {broken}: {tmp_path / 'gone.pem'}: cannot read: No such file or directory"
    )


def test_tls_file_that_is_a_directory_cannot_be_read(tmp_path: Path, script: Path) -> None:
    (tmp_path / "k.pem").write_text("key")
    message = refused(tmp_path, Tasks=[task(script)], StatsTLSCertFile=".", StatsTLSKeyFile="k.pem")
    assert message == f"{NAME}: StatsTLSCertFile: {tmp_path}: cannot read: Is a directory"


@pytest.mark.parametrize(
    "type_name", ["instances", "paused", "instance:x", "a:inflight:b", "x:failed"]
)
def test_types_that_would_collide_with_the_daemons_keys_are_refused(
    tmp_path: Path, type_name: str
) -> None:
    script = write_script(tmp_path, "t.sh", "exit 0")
    with pytest.raises(ConfigError, match=r"Tasks\[0\]\.Type: .* would collide"):
        load(tmp_path, Tasks=[{"Type": type_name, "Script": str(script)}])


def test_the_metrics_cannot_share_the_stats_path(tmp_path: Path) -> None:
    script = write_script(tmp_path, "t.sh", "exit 0")
    with pytest.raises(ConfigError, match="MetricsPattern: is StatsPattern too"):
        load(
            tmp_path,
            Tasks=[{"Type": "a", "Script": str(script)}],
            StatsPattern="/m",
            MetricsPattern="/m",
        )


def test_a_bad_certificate_is_named_by_its_setting(tmp_path: Path, script: Path) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    (tmp_path / "c.pem").write_text("not a certificate")
    message = refused(
        tmp_path, Tasks=[task(script)], StatsTLSCertFile="c.pem", StatsTLSKeyFile="k.pem"
    )
    assert message == f"{NAME}: StatsTLSCertFile: {tmp_path / 'c.pem'}: no PEM certificate in it"


def test_a_key_that_does_not_match_is_named(tmp_path: Path, script: Path) -> None:
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    message = refused(
        tmp_path, Tasks=[task(script)], StatsTLSCertFile="c.pem", StatsTLSKeyFile="k.pem"
    )
    assert message == (
        f"{NAME}: StatsTLSKeyFile: {tmp_path / 'k.pem'}: "
        f"does not match the certificate in {tmp_path / 'c.pem'}"
    )


# The check a start makes, as the commands that only check make it


def test_check_config_returns_the_config(tmp_path: Path, script: Path) -> None:
    write_config(tmp_path, RedisQueueKey="q", Tasks=[task(script)], Logfile="goophry.log")
    config = check_config(NAME)
    assert config.logfile == str(tmp_path / "goophry.log")
    # Checked, not created.
    assert not (tmp_path / "goophry.log").exists()


def test_check_config_refuses_what_load_config_refuses(tmp_path: Path) -> None:
    write_config(tmp_path, RedisQueueKey="q", Tasks=[])
    with pytest.raises(ConfigError) as info:
        check_config(NAME)
    assert str(info.value) == f"{NAME}: Tasks: at least one task type is needed"


@pytest.mark.parametrize("problem", ["no-directory", "directory", "read-only"])
def test_check_config_refuses_a_log_file_it_cannot_append_to(
    tmp_path: Path, script: Path, problem: str
) -> None:
    if problem == "read-only" and os.geteuid() == 0:
        pytest.skip("root may write any file")
    logfile = {
        "no-directory": tmp_path / "gone" / "goophry.log",
        "directory": tmp_path,
        "read-only": tmp_path / "ro.log",
    }[problem]
    if problem == "read-only":
        logfile.write_text("")
        logfile.chmod(0o444)
    expected = {
        "no-directory": f"no such directory: {tmp_path / 'gone'}",
        "directory": "is a directory",
        "read-only": "not writable",
    }[problem]
    write_config(tmp_path, RedisQueueKey="q", Tasks=[task(script)], Logfile=str(logfile))
    with pytest.raises(ConfigError) as info:
        check_config(NAME)
    assert str(info.value) == f"{NAME}: Logfile: {logfile}: {expected}"
    # A log file given on the command line wins over the config's.
    assert check_config(NAME, logfile=str(tmp_path / "other.log")).logfile == str(logfile)
    with pytest.raises(ConfigError) as info:
        check_config(NAME, logfile=str(logfile))
    assert str(info.value) == f"-l: {logfile}: {expected}"
