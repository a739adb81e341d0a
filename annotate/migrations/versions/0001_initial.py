"""Initial schema: annotators, faces, append-only decisions, leases.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Migrations are frozen history: the label list and sizes are copied here, not imported,
so that a later change to the package cannot silently rewrite what 0001 created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "not_a_face", "unsure", "skip")


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_annotators"),
        sa.UniqueConstraint("name", name="uq_annotators_name"),
    )
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("sample_id", sa.String(200), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=True),
        sa.Column("original_label", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_faces"),
        sa.UniqueConstraint("dataset", "sample_id", name="uq_faces_dataset_sample_id"),
        sa.CheckConstraint("original_label >= 0 AND original_label <= 6", name="ck_faces_original_label_range"),
    )
    labels = ", ".join(f"'{label}'" for label in _LABELS)
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(16), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("strategy", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reverses_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], name="fk_decisions_annotator_id_annotators"),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name="fk_decisions_face_id_faces"),
        sa.ForeignKeyConstraint(["reverses_id"], ["decisions.id"], name="fk_decisions_reverses_id_decisions"),
        sa.UniqueConstraint("reverses_id", name="uq_decisions_reverses_id"),
        sa.CheckConstraint(f"label IS NULL OR label IN ({labels})", name="ck_decisions_label_known"),
        sa.CheckConstraint(
            "(label IS NOT NULL AND reverses_id IS NULL) OR (label IS NULL AND reverses_id IS NOT NULL)",
            name="ck_decisions_answer_or_undo",
        ),
    )
    op.create_table(
        "leases",
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("face_id", name="pk_leases"),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name="fk_leases_face_id_faces"),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], name="fk_leases_annotator_id_annotators"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("decisions")
    op.drop_table("faces")
    op.drop_table("annotators")
