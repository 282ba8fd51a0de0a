"""fair share between tenants: each queued job's place in its kind's queue (``fair_vt``), and
each tenant's weight (``tenants.share``)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

A claim takes the queued jobs of a kind by priority, then by ``fair_vt``: a virtual time
stamped when a job is stored, so that tenants' jobs interleave by their shares (start-time
fair queuing; jobs/fairness.py says how). ``jobs_queued_fair`` replaces
``jobs_queued_by_urgency`` (kind, priority, created_at); ``jobs_queued_by_tenant`` finds a
tenant's first and last queued job of a kind when its next ones are stamped. Jobs queued
before this migration keep 0: they go first, as they would have. A BRIN index on
``finished_at`` lets the ops page and /metrics count each tenant's last minute of work
without reading the table (a BRIN index costs little to keep: rows finish in heap order).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("fair_vt", sa.Float(), server_default="0", nullable=False))
    op.add_column("tenants", sa.Column("share", sa.Integer(), server_default="1", nullable=False))
    op.drop_index("jobs_queued_by_urgency", table_name="jobs")
    op.create_index("jobs_queued_fair", "jobs", ["kind", sa.text("priority DESC"), "fair_vt"], postgresql_where=QUEUED)
    op.create_index(
        "jobs_queued_by_tenant", "jobs", ["tenant_id", "kind", "priority", "fair_vt"], postgresql_where=QUEUED
    )
    op.create_index("jobs_finished_brin", "jobs", ["finished_at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("jobs_finished_brin", table_name="jobs")
    op.drop_index("jobs_queued_by_tenant", table_name="jobs")
    op.drop_index("jobs_queued_fair", table_name="jobs")
    op.create_index(
        "jobs_queued_by_urgency", "jobs", ["kind", sa.text("priority DESC"), "created_at"], postgresql_where=QUEUED
    )
    op.drop_column("tenants", "share")
    op.drop_column("jobs", "fair_vt")
