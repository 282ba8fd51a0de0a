"""No default secret that works in production: a password that is a known placeholder
("changeme", "password", ...) stops ``mlq api``, ``mlq worker``, ``mlq reconcile`` and
``mlq flower`` at startup, unless they run inside ``mlq standalone`` (a demo on one machine).

A Sentinel ``MLQ_REDIS_URL`` is checked on each of its addresses, and the sentinels' own
``MLQ_REDIS_SENTINEL_PASSWORD`` with it.

An empty password is not a placeholder: it means the server trusts the connection
(a Unix socket, trust authentication), which is a deployment's own choice.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from jobs.redisconn import is_sentinel_url
from jobs.settings import Settings

PLACEHOLDERS = frozenset({
    "changeme", "change-me", "change_me", "changeit", "replaceme", "replace-me", "placeholder", "secret",
    "password", "passw0rd", "admin", "default", "example", "mlq", "postgres", "redis", "root", "test",
    "letmein", "123456", "12345678", "xxx", "xxxx", "todo",
})  # fmt: skip


class PlaceholderSecret(RuntimeError):
    """A setting holds a password that is a known placeholder."""


def is_placeholder(password: str) -> bool:
    return password.strip().lower() in PLACEHOLDERS


def url_password(url: str | None) -> str:
    if not url:
        return ""
    return unquote(urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1)).password or "")


def url_passwords(url: str | None) -> list[str]:
    """Every password in ``url``: one, or one per address of a Sentinel URL (``…;…``)."""
    if not url:
        return []
    if is_sentinel_url(url):
        return [url_password(part) for part in url.split(";") if part.strip()]
    return [url_password(url)]


def placeholder_secrets(settings: Settings, *, basic_auth: str | None = None) -> list[str]:
    """The settings whose password is a known placeholder, by name."""
    found = [
        name
        for name, url in (("MLQ_DATABASE_URL", settings.database_url), ("MLQ_REDIS_URL", settings.redis_url))
        if any(is_placeholder(password) for password in url_passwords(url))
    ]
    if settings.redis_sentinel_password and is_placeholder(settings.redis_sentinel_password):
        found.append("MLQ_REDIS_SENTINEL_PASSWORD")
    if basic_auth and any(is_placeholder(pair.partition(":")[2]) for pair in basic_auth.split(",")):
        found.append("MLQ_FLOWER_BASIC_AUTH")
    return found


def refuse_placeholders(settings: Settings, *, basic_auth: str | None = None) -> None:
    """Raise PlaceholderSecret naming each setting with a placeholder password (not in standalone)."""
    if settings.standalone:
        return
    found = placeholder_secrets(settings, basic_auth=basic_auth)
    if found:
        raise PlaceholderSecret(
            f"refusing to start: the password in {' and '.join(found)} is a known placeholder "
            "(like 'changeme' or 'password'); set a real secret, or run `mlq standalone` for a demo on one machine"
        )
