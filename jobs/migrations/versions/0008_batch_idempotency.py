"""bulk runs take an Idempotency-Key; batch metadata is always an object

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

A client whose connection broke while a bulk run was accepted cannot know whether it was
stored: with a key it sends the run again and gets the stored one back. ``request_sha256``
is the digest of the validated lines and options, so the same key with other lines is a 409.

Multipart bulk runs once stored metadata that was not an object (``metadata=[1]``); such a
value is kept under ``{"value": ...}`` so every batch reads back as the API documents it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.add_column("batches", sa.Column("request_sha256", sa.String(64), nullable=True))
    op.create_unique_constraint("batches_tenant_idempotency_key", "batches", ["tenant_id", "idempotency_key"])
    op.execute(
        "UPDATE batches SET metadata = jsonb_build_object('value', metadata) WHERE jsonb_typeof(metadata) <> 'object'"
    )


def downgrade() -> None:
    op.drop_constraint("batches_tenant_idempotency_key", "batches")
    op.drop_column("batches", "request_sha256")
    op.drop_column("batches", "idempotency_key")
