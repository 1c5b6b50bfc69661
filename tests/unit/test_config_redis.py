"""goophry_tx.config: the settings of TLS to Redis, Sentinel and RedisWaitReplicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from goophry_tx.config import Config, ConfigError, load_config
from tests.helpers import write_config, write_script

NAME = "goophry.config.json"


@pytest.fixture
def tasks(tmp_path: Path) -> list[dict[str, Any]]:
    return [{"Type": "t", "Script": str(write_script(tmp_path, "task.sh", "exit 0"))}]


@pytest.fixture
def pems(tmp_path: Path) -> Path:
    """``ca.pem``, and a client ``cert.pem`` with its ``key.pem``, in ``tls/``."""
    ca = trustme.CA()
    client = ca.issue_cert("goophry-client")
    folder = tmp_path / "tls"
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    client.private_key_pem.write_to_path(str(folder / "key.pem"))
    return folder


def load(directory: Path, **settings: Any) -> Config:
    settings.setdefault("RedisQueueKey", "q")
    return load_config(str(write_config(directory, **settings)))


def refused(directory: Path, **settings: Any) -> str:
    """The message, with the config file named as the tests name it (its base name)."""
    with pytest.raises(ConfigError) as info:
        load(directory, **settings)
    return str(info.value).replace(f"{directory}/{NAME}", NAME, 1)


def test_without_them_nothing_changes(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    config = load(tmp_path, Tasks=tasks)
    assert (config.redis_tls, config.redis_tls_ca_file, config.redis_tls_cert_file) == (
        False,
        None,
        None,
    )
    assert (config.redis_sentinels, config.redis_sentinel_master) == ((), None)
    assert config.redis_wait_replicas == 0
    assert config.warnings == ()


def test_tls_files_resolve_against_the_config_directory(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path
) -> None:
    config = load(
        tmp_path,
        Tasks=tasks,
        RedisTLS=True,
        RedisTLSCAFile="tls/ca.pem",
        RedisTLSCertFile="tls/cert.pem",
        RedisTLSKeyFile="tls/key.pem",
        RedisTLSServerName="redis.example.com",
    )
    assert config.redis_tls
    assert config.redis_tls_ca_file == str(pems / "ca.pem")
    assert config.redis_tls_cert_file == str(pems / "cert.pem")
    assert config.redis_tls_key_file == str(pems / "key.pem")
    assert config.redis_tls_server_name == "redis.example.com"


def test_tls_alone_trusts_the_system_store(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    config = load(tmp_path, Tasks=tasks, RedisTLS=True)
    assert config.redis_tls
    assert config.redis_tls_ca_file is None


def test_redis_tls_is_a_boolean(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    message = refused(tmp_path, Tasks=tasks, RedisTLS="yes")
    assert message == f'{NAME}: RedisTLS: expected true or false, got "yes"'


@pytest.mark.parametrize("name", ["RedisTLSCAFile", "RedisTLSServerName"])
def test_tls_settings_without_redis_tls_are_refused(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path, name: str
) -> None:
    message = refused(tmp_path, Tasks=tasks, **{name: "tls/ca.pem"})
    assert message == f"{NAME}: {name}: set, but RedisTLS is not true"


def test_tls_over_a_unix_socket_is_refused(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    message = refused(
        tmp_path, Tasks=tasks, RedisNetwork="unix", RedisAddress="redis.sock", RedisTLS=True
    )
    assert message == f"{NAME}: RedisTLS: Redis serves TLS over tcp only, and RedisNetwork is unix"


@pytest.mark.parametrize(
    ("given", "missing"),
    [("RedisTLSCertFile", "RedisTLSKeyFile"), ("RedisTLSKeyFile", "RedisTLSCertFile")],
)
def test_a_client_certificate_needs_both_files(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path, given: str, missing: str
) -> None:
    message = refused(tmp_path, Tasks=tasks, RedisTLS=True, **{given: "tls/cert.pem"})
    assert message == (
        f"{NAME}: {missing}: a client certificate needs both RedisTLSCertFile and RedisTLSKeyFile"
    )


@pytest.mark.parametrize("broken", ["RedisTLSCAFile", "RedisTLSCertFile", "RedisTLSKeyFile"])
def test_unreadable_tls_files_are_refused_at_load(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path, broken: str
) -> None:
    files = {
        "RedisTLSCAFile": "tls/ca.pem",
        "RedisTLSCertFile": "tls/cert.pem",
        "RedisTLSKeyFile": "tls/key.pem",
        broken: "tls/gone.pem",
    }
    message = refused(tmp_path, Tasks=tasks, RedisTLS=True, **files)
    assert message == (
        f"{NAME}: {broken}: {pems / 'gone.pem'}: cannot read: No such file or directory"
    )


def test_a_ca_file_without_a_certificate_is_refused(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path
) -> None:
    message = refused(tmp_path, Tasks=tasks, RedisTLS=True, RedisTLSCAFile="tls/key.pem")
    assert message == f"{NAME}: RedisTLSCAFile: {pems / 'key.pem'}: no PEM certificate in it"


def test_a_key_of_another_certificate_is_refused(
    tmp_path: Path, tasks: list[dict[str, Any]], pems: Path
) -> None:
    trustme.CA().issue_cert("other").private_key_pem.write_to_path(str(pems / "other.key"))
    message = refused(
        tmp_path,
        Tasks=tasks,
        RedisTLS=True,
        RedisTLSCertFile="tls/cert.pem",
        RedisTLSKeyFile="tls/other.key",
    )
    assert message == (
        f"{NAME}: RedisTLSKeyFile: {pems / 'other.key'}: "
        f"does not match the certificate in {pems / 'cert.pem'}"
    )


def test_sentinels(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    config = load(
        tmp_path,
        Tasks=tasks,
        RedisSentinels=["10.0.0.1:26379", "[::1]:26380"],
        RedisSentinelMaster="jobs",
        RedisSentinelUsername="watcher",
        RedisSentinelPassword="s3cret",
    )
    assert config.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert config.redis_sentinel_master == "jobs"
    assert config.redis_sentinel_username == "watcher"
    assert config.redis_sentinel_password == "s3cret"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"RedisSentinels": "10.0.0.1:26379", "RedisSentinelMaster": "m"},
            'RedisSentinels: expected an array of host:port, got "10.0.0.1:26379"',
        ),
        (
            {"RedisSentinels": ["10.0.0.1:26379", "nowhere"], "RedisSentinelMaster": "m"},
            'RedisSentinels[1]: expected host:port, got "nowhere"',
        ),
        (
            {"RedisSentinels": ["10.0.0.1:26379"]},
            "RedisSentinelMaster: required with RedisSentinels, but missing",
        ),
        ({"RedisSentinelMaster": "m"}, "RedisSentinelMaster: set, but RedisSentinels is empty"),
        (
            {"RedisSentinelPassword": "pw"},
            "RedisSentinelPassword: set, but RedisSentinels is empty",
        ),
        (
            {
                "RedisSentinels": ["10.0.0.1:26379"],
                "RedisSentinelMaster": "m",
                "RedisNetwork": "unix",
                "RedisAddress": "redis.sock",
            },
            "RedisSentinels: Sentinel needs RedisNetwork tcp",
        ),
        ({"RedisWaitReplicas": -1}, "RedisWaitReplicas: must be 0 or more, got -1"),
    ],
)
def test_bad_sentinel_settings(
    tmp_path: Path, tasks: list[dict[str, Any]], settings: dict[str, Any], message: str
) -> None:
    assert refused(tmp_path, Tasks=tasks, **settings) == f"{NAME}: {message}"


def test_wait_replicas(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    assert load(tmp_path, Tasks=tasks, RedisWaitReplicas=1).redis_wait_replicas == 1
