"""retention: a tenant's own ``retention_days``, and the indexes that make pruning a bulk run cheap

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

Finished jobs are pruned after their tenant's retention (jobs/retention.py). Single jobs are
found by walking ``jobs_tenant_created`` from where the last transaction stopped, so they
need no new index on ``jobs`` (each index there costs every submit and every finish). A
pruned bulk run takes its result files with it (``files.batch_id``, ON DELETE CASCADE: without
``files_batch`` each run's delete read the whole files table) and its uploaded input file
when no other run names it (``batches_input_file``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("retention_days", sa.Integer(), nullable=True))
    op.create_index("files_batch", "files", ["batch_id"], postgresql_where=sa.text("batch_id IS NOT NULL"))
    op.create_index(
        "batches_input_file", "batches", ["input_file_id"], postgresql_where=sa.text("input_file_id IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("batches_input_file", table_name="batches")
    op.drop_index("files_batch", table_name="files")
    op.drop_column("tenants", "retention_days")
