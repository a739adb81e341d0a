"""The tables of the annotation store, as SQLAlchemy 2.0 declarative models.

``annotators``
    One row per person, by the name they typed (stored as given).
``faces``
    The faces the store knows: data set name, ``sample_id``, sha256 of the 48x48 uint8
    pixels (``None`` when registered without pixels), original FER2013 label id 0..6.
    ``(dataset, sample_id)`` is unique.
``decisions``
    Append-only. A row is either an answer (``label`` set, ``reverses_id`` empty) or an undo
    (``label`` empty, ``reverses_id`` = the answer it cancels). Nothing is ever updated or
    deleted; ``reverses_id`` is unique, so an answer is undone at most once. Each answer
    records what the annotator was shown: the model version and the queue strategy.
    "Latest" always means highest ``id``. On SQLite, and on PostgreSQL where write
    transactions take the store's advisory lock (:mod:`annotate.engine`), writers run one at a
    time, so ``id`` order is commit order on both.
``leases``
    Which face is in front of which annotator until when. ``face_id`` is the primary key, so
    a face has at most one lease row; an expired row is dead and is replaced by the next taker.

The schema is created and changed only by the Alembic migrations in ``annotate/migrations``;
these models must describe the schema at the head revision (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .labels import LABELS, MAX_NAME_LENGTH, MAX_TAG_LENGTH

__all__ = ["Base", "UTCDateTime", "Annotator", "Face", "Decision", "Lease", "NAMING_CONVENTION"]

#: Constraint names are fixed by convention so that later migrations can refer to them
#: (SQLite's batch mode rebuilds tables and needs names to drop or alter constraints).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database.

    SQLite has no time zones: values are stored as naive UTC text (which sorts and compares
    correctly) and read back as aware UTC. PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the annotation store; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


def _in_list(column: str, values: tuple[str, ...]) -> str:
    # Built from constants of this package, never from user input.
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH), unique=True)
    created_at: Mapped[datetime]


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = (
        UniqueConstraint("dataset", "sample_id"),
        CheckConstraint("original_label >= 0 AND original_label <= 6", name="original_label_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(MAX_TAG_LENGTH))
    sample_id: Mapped[str] = mapped_column(String(MAX_TAG_LENGTH))
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    original_label: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(f"label IS NULL OR {_in_list('label', LABELS)}", name="label_known"),
        # Exactly one of label / reverses_id: an answer, or the undo of one.
        CheckConstraint(
            "(label IS NOT NULL AND reverses_id IS NULL) OR (label IS NULL AND reverses_id IS NOT NULL)",
            name="answer_or_undo",
        ),
        # Added by revision 0002: the queue's and the progress counters' lookups.
        Index("ix_decisions_face_id", "face_id"),
        Index("ix_decisions_annotator_id_created_at", "annotator_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id"))
    created_at: Mapped[datetime]
    label: Mapped[str | None] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(MAX_TAG_LENGTH))
    strategy: Mapped[str | None] = mapped_column(String(MAX_TAG_LENGTH))
    note: Mapped[str | None] = mapped_column(Text)
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), unique=True)


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (
        # Added by revision 0002: releasing an annotator's leases, dropping expired ones.
        Index("ix_leases_annotator_id", "annotator_id"),
        Index("ix_leases_expires_at", "expires_at"),
    )

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    leased_at: Mapped[datetime]
    expires_at: Mapped[datetime]
