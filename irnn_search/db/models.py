"""The experiment database's tables: launches, studies, workers, trial runs, evaluations.

Every table carries the ``irnn_`` prefix and Alembic keeps its revision in ``irnn_alembic_version``,
so the schema can live beside Optuna's or MLflow's (both own ``alembic_version``) without either
tool seeing ours. Constraint names come from one naming convention, so migrations can name what
they drop. JSON columns use the portable ``sqlalchemy.JSON`` (TEXT on SQLite, JSON on PostgreSQL).

Times are timezone-aware UTC in Python on every backend: SQLite has no time zones, so
:class:`UTCDateTime` stores UTC and attaches it again when reading.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from irnn_search.outcome import RECORDED

#: every table of ours starts with this, and only ours do (Alembic's filters rely on it)
TABLE_PREFIX = "irnn_"

STUDY_STATUSES = ("open", "finished")
#: what a trial run may end as (its check constraint: the order is the constraint's, keep it)
OUTCOMES = tuple(o.value for o in RECORDED)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on SQLite and PostgreSQL alike.

    Naive datetimes are refused when binding: their zone is unknowable.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one (e.g. datetime.now(UTC))")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class LaunchRow(Base):
    """One ``launch`` of a spec: the resolved spec exactly as the workers will rebuild it."""

    __tablename__ = "irnn_launches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_name: Mapped[str] = mapped_column(String(200), index=True)
    #: the resolved spec (defaults filled in), so workers never need the TOML file
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    package_version: Mapped[str] = mapped_column(String(64))
    #: ``user@host`` of whoever launched
    who: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyRow(Base):
    """One Optuna study (one model of one spec) and its MLflow parent run."""

    __tablename__ = "irnn_studies"
    __table_args__ = (CheckConstraint(_in("status", STUDY_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the Optuna study name; the key every other component uses
    study_name: Mapped[str] = mapped_column(String(255), unique=True)
    #: the launch that created the study (a relaunch with the same spec keeps it)
    launch_id: Mapped[int] = mapped_column(ForeignKey("irnn_launches.id"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    #: the model key in the spec (several keys may share one family)
    model: Mapped[str] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(64))
    spec_hash: Mapped[str] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    #: loaded on access (the spec can be large), so only inside a session
    launch: Mapped[LaunchRow] = relationship()


class WorkerRow(Base):
    """One worker process; alive while it heartbeats and has not stopped."""

    __tablename__ = "irnn_workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: ``cpu``, ``cuda:0``, ...
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    current_study_id: Mapped[int | None] = mapped_column(ForeignKey("irnn_studies.id", ondelete="SET NULL"))
    current_trial_number: Mapped[int | None] = mapped_column(Integer)
    stopped_at: Mapped[datetime | None]

    current_study: Mapped[StudyRow | None] = relationship(lazy="joined")


class TrialRunRow(Base):
    """One execution of one Optuna trial: trial <-> MLflow run, where it ran, how long, how it ended.

    A trial that is interrupted and re-queued comes back as a new Optuna trial (a new number), so
    ``(study, trial_number)`` stays unique; ``resumed_from_step`` tells that the run continued from
    a checkpoint.
    """

    __tablename__ = "irnn_trial_runs"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_number"),
        CheckConstraint(_in("outcome", OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("irnn_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    #: Optuna's storage-wide trial id
    trial_id: Mapped[int] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("irnn_workers.id", ondelete="SET NULL"), index=True)
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: NULL while the run is in progress
    finished_at: Mapped[datetime | None]
    #: seconds from start to finish, including data loading and evaluation
    wall_s: Mapped[float | None] = mapped_column(Float)
    #: seconds spent in training steps only
    train_s: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    steps_per_s: Mapped[float | None] = mapped_column(Float)
    #: one of OUTCOMES; NULL while in progress
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    #: the objective; NULL when there is none (NaN and inf are never stored)
    value: Mapped[float | None] = mapped_column(Float)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    #: the packed computation this run shared with other trials (NULL: it ran alone)
    pack_id: Mapped[str | None] = mapped_column(String(64))
    #: trials in the pack when this run joined it
    pack_size: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[StudyRow] = relationship(lazy="joined")


class EvaluationRow(Base):
    """Final metrics of a trial run on one split (``valid``, ``test``, ...)."""

    __tablename__ = "irnn_evaluations"
    __table_args__ = (UniqueConstraint("trial_run_id", "split"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_run_id: Mapped[int] = mapped_column(ForeignKey("irnn_trial_runs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(32))
    #: metric name -> number (non-finite numbers stored as null)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
