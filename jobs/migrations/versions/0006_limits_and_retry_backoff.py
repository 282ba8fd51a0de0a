"""per-tenant submission limits, and a retry time for jobs given back after a transient error

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the deployment's default (MLQ_JOBS_PER_MINUTE, MLQ_MAX_ACTIVE_JOBS_PER_KIND); 0: no limit
    op.add_column("tenants", sa.Column("jobs_per_minute", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_active_jobs_per_kind", sa.Integer(), nullable=True))
    # a job released after a transient error is published again at this time (exponential backoff)
    op.add_column("jobs", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "jobs_retry_due", "jobs", ["retry_at"], postgresql_where=sa.text("status = 'queued' AND retry_at IS NOT NULL")
    )
    # the active single jobs of a tenant and kind, counted at submission
    op.create_index(
        "jobs_tenant_active",
        "jobs",
        ["tenant_id", "kind"],
        postgresql_where=sa.text("status IN ('queued', 'running') AND batch_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_tenant_active", table_name="jobs")
    op.drop_index("jobs_retry_due", table_name="jobs")
    op.drop_column("jobs", "retry_at")
    op.drop_column("tenants", "max_active_jobs_per_kind")
    op.drop_column("tenants", "jobs_per_minute")
