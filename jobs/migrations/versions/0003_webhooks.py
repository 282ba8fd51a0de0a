"""webhooks: a signing secret per tenant, job webhook URLs, the delivery outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("webhook_secret", sa.String(64)))
    tenants = sa.table("tenants", sa.column("id", pg.UUID(as_uuid=True)), sa.column("webhook_secret", sa.String))
    bind = op.get_bind()
    for (tenant_id,) in bind.execute(sa.select(tenants.c.id)).all():
        bind.execute(tenants.update().where(tenants.c.id == tenant_id).values(webhook_secret=secrets.token_hex(32)))
    op.alter_column("tenants", "webhook_secret", nullable=False)
    op.add_column("jobs", sa.Column("webhook_url", sa.Text))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", pg.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE")),
        sa.Column("batch_id", pg.UUID(as_uuid=True), sa.ForeignKey("batches.id", ondelete="CASCADE")),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("job_id", name="webhook_deliveries_job"),
        sa.UniqueConstraint("batch_id", name="webhook_deliveries_batch"),
    )
    op.create_index(
        "webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_column("jobs", "webhook_url")
    op.drop_column("tenants", "webhook_secret")
