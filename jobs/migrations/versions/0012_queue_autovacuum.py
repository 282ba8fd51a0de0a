"""queue autovacuum: ``jobs`` and ``webhook_deliveries`` are vacuumed by rows changed, not by a fifth of the table

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

Both tables are queues: every claim, heartbeat and finish of a job (every delivery of a
webhook) leaves a dead row version behind, and the claim's index (``jobs_queued_fair``) keeps
pointing at dead entries until a VACUUM. PostgreSQL's default waits for 20 % of a table to be
dead; with millions of finished jobs kept for their retention that is hundreds of thousands
of dead entries under the head of the queue, and claims slow with them (``bench soak``: p99
over 1 s once 321,000 were dead; one VACUUM brought it back to 325-742 ms). Here autovacuum
takes them once 10,000 rows have changed, unthrottled enough to keep up, and ANALYZE follows
the queue's depth (the claim is planned for each run's values: jobs/db.py).

These are per-table storage parameters; they act only where autovacuum is on (the server's
``autovacuum`` setting, on by default). The reconciler warns when it is off.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Written out for each table: no SQL is built from strings (tests/security/test_static.py).
# The insert thresholds: a bulk run's COPY gets its visibility map set early. cost_delay is in
# ms (the server's default 2); cost_limit's default is 200.


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs SET (
            autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
            autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000,
            autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000,
            autovacuum_vacuum_cost_delay = 1, autovacuum_vacuum_cost_limit = 2000
        )
        """
    )
    op.execute(
        """
        ALTER TABLE webhook_deliveries SET (
            autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
            autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000,
            autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000,
            autovacuum_vacuum_cost_delay = 1, autovacuum_vacuum_cost_limit = 2000
        )
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs RESET (
            autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
            autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
            autovacuum_analyze_scale_factor, autovacuum_analyze_threshold,
            autovacuum_vacuum_cost_delay, autovacuum_vacuum_cost_limit
        )
        """
    )
    op.execute(
        """
        ALTER TABLE webhook_deliveries RESET (
            autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
            autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
            autovacuum_analyze_scale_factor, autovacuum_analyze_threshold,
            autovacuum_vacuum_cost_delay, autovacuum_vacuum_cost_limit
        )
        """
    )
