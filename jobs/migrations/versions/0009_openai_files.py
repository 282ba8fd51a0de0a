"""OpenAI's Files and Batch API: a files table, and a bulk run's endpoint and files

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

A run made through OpenAI's Batch API is a bulk run like any other (its jobs carry
``batch_id``); the batch row adds the endpoint its lines call, its input file and its output
and error files. Those two are rows of ``files`` without bytes: their lines are read from
the run's jobs when asked for, as ``/v1/batches/{id}/results`` reads them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("endpoint", sa.String(64), nullable=True))
    op.add_column("batches", sa.Column("completion_window", sa.String(16), nullable=True))
    op.add_column("batches", sa.Column("input_file_id", UUID(as_uuid=True), nullable=True))
    op.add_column("batches", sa.Column("output_file_id", UUID(as_uuid=True), nullable=True))
    op.add_column("batches", sa.Column("error_file_id", UUID(as_uuid=True), nullable=True))
    op.create_table(
        "files",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("batch_id", UUID(as_uuid=True), sa.ForeignKey("batches.id", ondelete="CASCADE"), nullable=True),
        sa.Column("part", sa.String(8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("files_tenant_created", "files", ["tenant_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("files_tenant_created", "files")
    op.drop_table("files")
    for column in ("error_file_id", "output_file_id", "input_file_id", "completion_window", "endpoint"):
        op.drop_column("batches", column)
