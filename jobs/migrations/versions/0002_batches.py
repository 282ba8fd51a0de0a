"""batches, and the batch columns of jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(64)),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("webhook_url", sa.Text),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("batches_tenant_created", "batches", ["tenant_id", "created_at", "id"])
    op.add_column("jobs", sa.Column("batch_id", pg.UUID(as_uuid=True), sa.ForeignKey("batches.id", ondelete="CASCADE")))
    op.add_column("jobs", sa.Column("batch_index", sa.Integer))
    op.add_column("jobs", sa.Column("custom_id", sa.String(255)))
    op.create_index(
        "jobs_batch_order", "jobs", ["batch_id", "batch_index"], postgresql_where=sa.text("batch_id IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("jobs_batch_order", table_name="jobs")
    op.drop_column("jobs", "custom_id")
    op.drop_column("jobs", "batch_index")
    op.drop_column("jobs", "batch_id")
    op.drop_table("batches")
