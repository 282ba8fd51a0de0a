"""MLQ_REDIS_URL in kombu's Sentinel form: the sentinels, the master's name, database and
password, as the broker, the redis-py clients and the secrets check read them."""

from __future__ import annotations

import re

import pytest
from redis.sentinel import SentinelConnectionPool

from jobs.broker import celery_config
from jobs.errors import NotConfigured
from jobs.redisconn import SentinelUrl, broker_url, is_sentinel_url, open_redis, parse_sentinel_url
from jobs.secrets import placeholder_secrets
from jobs.settings import Settings

URL = "sentinel://:s3cr%40t-pw@s1.example:26380;sentinel://:s3cr%40t-pw@s2.example;sentinel://:s3cr%40t-pw@10.0.0.3:26381/2"


def test_a_sentinel_url_names_every_sentinel_the_master_db_and_password() -> None:
    assert is_sentinel_url(URL) and not is_sentinel_url("redis://h:6379/0") and not is_sentinel_url(None)
    assert parse_sentinel_url(URL) == SentinelUrl(
        sentinels=(("s1.example", 26380), ("s2.example", 26379), ("10.0.0.3", 26381)),
        db=2,
        password="s3cr@t-pw",  # percent-decoded
    )
    # named once, on the first address (kombu's reading) or the last (the usual way to write it)
    once = "sentinel://u:pw@a:1/3;sentinel://b:2"
    assert parse_sentinel_url(once) == SentinelUrl(sentinels=(("a", 1), ("b", 2)), db=3, username="u", password="pw")
    assert parse_sentinel_url("sentinel://a;sentinel://b/0;") == SentinelUrl(sentinels=(("a", 26379), ("b", 26379)))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://a:1/1;sentinel://b:2/2", "databases [1, 2]"),
        ("sentinel://:one@a:1;sentinel://:two@b:2", "different credentials"),
        ("sentinel://:pw@a:1;redis://:pw@b:6379", "address 2: every address"),
        ("sentinel://:pw@a:99999", "address 1: the port"),
        ("sentinel://:pw@a:1/x", "the database is a number"),
        ("sentinel://:pw@:1", "no host"),
        (";", "no sentinel"),
    ],
)
def test_a_wrong_sentinel_url_says_what_without_showing_the_password(url: str, says: str) -> None:
    with pytest.raises(NotConfigured, match=re.escape(says)) as refused:
        parse_sentinel_url(url)
    assert "pw" not in str(refused.value).replace("password", "")


def test_the_broker_gets_kombus_form_and_the_master_name() -> None:
    settings = Settings(redis_url=URL, redis_sentinel_master="jobs-master", redis_sentinel_password="sentinel-pw-1")
    config = celery_config(settings)
    # kombu reads the password and database from the first address only: every address carries them
    assert config["broker_url"] == (
        "sentinel://:s3cr%40t-pw@s1.example:26380/2;sentinel://:s3cr%40t-pw@s2.example:26379/2;"
        "sentinel://:s3cr%40t-pw@10.0.0.3:26381/2"
    )
    options = config["broker_transport_options"]
    assert options["master_name"] == "jobs-master"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw-1"
    assert options["visibility_timeout"] > 0  # what a plain URL gets is kept
    plain = celery_config(Settings(redis_url="redis://:pw@h:6379/1"))
    assert plain["broker_url"] == "redis://:pw@h:6379/1" and "master_name" not in plain["broker_transport_options"]
    assert broker_url("sentinel://[::1]:5000/1") == "sentinel://[::1]:5000/1"


def test_a_client_of_a_sentinel_url_asks_the_sentinels_for_the_named_master() -> None:
    settings = Settings(redis_url=URL, redis_sentinel_master="jobs-master", redis_sentinel_password="sentinel-pw-1")
    client = open_redis(settings, timeout_s=0.5)  # connects at its first command, not here
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "jobs-master"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "s3cr@t-pw")
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ] == [
        ("s1.example", 26380),
        ("s2.example", 26379),
        ("10.0.0.3", 26381),
    ]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-pw-1"}
    assert {s.connection_pool.connection_kwargs["socket_timeout"] for s in sentinels} == {0.5}
    alone = open_redis("sentinel://a:1/0", timeout_s=1).connection_pool
    assert isinstance(alone, SentinelConnectionPool) and alone.service_name == "mymaster"
    plain = open_redis("redis://h:6379/3", timeout_s=1).connection_pool
    assert not isinstance(plain, SentinelConnectionPool) and plain.connection_kwargs["db"] == 3


def test_placeholder_passwords_are_found_on_any_sentinel_address_and_the_sentinels_own() -> None:
    good = "sentinel://:Vq9-x7Lr2@a:1;sentinel://:Vq9-x7Lr2@b:2/0"
    assert placeholder_secrets(Settings(redis_url=good, redis_sentinel_password="Kp3-r8Zw1")) == []
    assert placeholder_secrets(Settings(redis_url="sentinel://a:1;sentinel://:changeme@b:2/0")) == ["MLQ_REDIS_URL"]
    assert placeholder_secrets(Settings(redis_url=good, redis_sentinel_password="redis")) == [
        "MLQ_REDIS_SENTINEL_PASSWORD"
    ]
