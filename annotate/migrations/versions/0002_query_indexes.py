"""Indexes for the queue's lookups: decisions by face and by annotator and time, leases by annotator and expiry.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Adds indexes only; every row of a 0001 database is kept as is.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_decisions_face_id", "decisions", ["face_id"])
    op.create_index("ix_decisions_annotator_id_created_at", "decisions", ["annotator_id", "created_at"])
    op.create_index("ix_leases_annotator_id", "leases", ["annotator_id"])
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_leases_expires_at", table_name="leases")
    op.drop_index("ix_leases_annotator_id", table_name="leases")
    op.drop_index("ix_decisions_annotator_id_created_at", table_name="decisions")
    op.drop_index("ix_decisions_face_id", table_name="decisions")
