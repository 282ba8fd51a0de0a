"""Tenants and their API keys: create, authenticate, revoke, and a tenant's own limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from jobs.tables import ApiKey, Tenant

SCOPES = ("submit", "read", "admin")
KEY_PREFIX = "mlq"


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    scopes: frozenset[str]
    jobs_per_minute: int | None = None  # the tenant's own limits; None: the deployment's default
    max_active_jobs_per_kind: int | None = None


def ensure_tenant(session: Session, *, name: str) -> uuid.UUID:
    stmt = (
        pg_insert(Tenant)
        .values(id=uuid.uuid4(), name=name, webhook_secret=secrets.token_hex(32))
        .on_conflict_do_nothing(index_elements=[Tenant.name])
    )
    session.execute(stmt)
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def webhook_secret(session: Session, *, tenant: str) -> str | None:
    return session.execute(select(Tenant.webhook_secret).where(Tenant.name == tenant)).scalar_one_or_none()


def create_api_key(session: Session, *, tenant: str, scopes: Sequence[str] = SCOPES) -> tuple[str, uuid.UUID]:
    """Create a key for ``tenant`` (created if new). Returns the key, shown only now, and its id.

    Keys carry 256 random bits, so a SHA-256 of the key is safe to store and
    compare; the prefix is public and only finds the row.
    """
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    tenant_id = ensure_tenant(session, name=tenant)
    prefix = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{KEY_PREFIX}_{prefix}_{secret}"
    key_id = uuid.uuid4()
    session.execute(
        insert(ApiKey).values(
            id=key_id, tenant_id=tenant_id, prefix=prefix, key_hash=hash_key(key), scopes=list(scopes)
        )
    )
    return key, key_id


def authenticate(session: Session, *, key: str) -> Principal | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = session.execute(
        select(
            ApiKey.id,
            ApiKey.key_hash,
            ApiKey.scopes,
            ApiKey.revoked_at,
            Tenant.id,
            Tenant.name,
            Tenant.jobs_per_minute,
            Tenant.max_active_jobs_per_kind,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == parts[1])
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return Principal(
        tenant_id=row[4], tenant_name=row.name, key_id=row.id, scopes=frozenset(row.scopes),
        jobs_per_minute=row.jobs_per_minute, max_active_jobs_per_kind=row.max_active_jobs_per_kind,
    )  # fmt: skip


def set_tenant_limits(
    session: Session,
    *,
    tenant: str,
    jobs_per_minute: int | None,
    max_active_jobs_per_kind: int | None,
    share: int | None = None,
    retention_days: int | None = None,
) -> bool:
    """Set a tenant's own submission limits (None: back to the deployment's default; 0: none)
    and, when given, its share of the workers (jobs/fairness.py) and its retention
    (jobs/retention.py; 0: forever; -1: the deployment's)."""
    values: dict[str, int | None] = {
        "jobs_per_minute": jobs_per_minute,
        "max_active_jobs_per_kind": max_active_jobs_per_kind,
    }
    if share is not None:
        values["share"] = share
    if retention_days is not None:  # below 0: back to the deployment's (MLQ_RETENTION_DAYS)
        values["retention_days"] = None if retention_days < 0 else retention_days
    result = session.execute(update(Tenant).where(Tenant.name == tenant).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revoke_api_key(session: Session, *, prefix: str) -> bool:
    result = session.execute(
        update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
