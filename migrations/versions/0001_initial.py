"""Initial schema: launches, studies, workers, trial runs, evaluations.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Types are written out here rather than imported from the models, so this revision stays what it
was when the models change. Times are ``DateTime(timezone=True)`` (the models' ``UTCDateTime``
stores UTC in it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "irnn_launches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec_name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("package_version", sa.String(length=64), nullable=False),
        sa.Column("who", sa.String(length=255), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_irnn_launches")),
    )
    op.create_index(op.f("ix_irnn_launches_spec_name"), "irnn_launches", ["spec_name"])

    op.create_table(
        "irnn_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_name", sa.String(length=255), nullable=False),
        sa.Column("launch_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("mlflow_experiment_id", sa.String(length=64), nullable=True),
        sa.Column("mlflow_parent_run_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        _time("created_at"),
        _time("finished_at", nullable=True),
        sa.CheckConstraint("status IN ('open', 'finished')", name=op.f("ck_irnn_studies_status")),
        sa.ForeignKeyConstraint(
            ["launch_id"], ["irnn_launches.id"], name=op.f("fk_irnn_studies_launch_id_irnn_launches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_irnn_studies")),
        sa.UniqueConstraint("study_name", name=op.f("uq_irnn_studies_study_name")),
    )
    op.create_index(op.f("ix_irnn_studies_launch_id"), "irnn_studies", ["launch_id"])

    op.create_table(
        "irnn_workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        _time("started_at"),
        _time("heartbeat_at"),
        sa.Column("current_study_id", sa.Integer(), nullable=True),
        sa.Column("current_trial_number", sa.Integer(), nullable=True),
        _time("stopped_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["current_study_id"],
            ["irnn_studies.id"],
            name=op.f("fk_irnn_workers_current_study_id_irnn_studies"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_irnn_workers")),
    )
    op.create_index(op.f("ix_irnn_workers_heartbeat_at"), "irnn_workers", ["heartbeat_at"])

    op.create_table(
        "irnn_trial_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(length=32), nullable=False),
        _time("started_at"),
        _time("finished_at", nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=True),
        sa.Column("train_s", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("steps_per_s", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("resumed_from_step", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('complete', 'pruned', 'diverged', 'failed', 'interrupted')",
            name=op.f("ck_irnn_trial_runs_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["irnn_studies.id"],
            name=op.f("fk_irnn_trial_runs_study_id_irnn_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["irnn_workers.id"],
            name=op.f("fk_irnn_trial_runs_worker_id_irnn_workers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_irnn_trial_runs")),
        sa.UniqueConstraint("study_id", "trial_number", name=op.f("uq_irnn_trial_runs_study_id_trial_number")),
    )
    op.create_index(op.f("ix_irnn_trial_runs_worker_id"), "irnn_trial_runs", ["worker_id"])

    op.create_table(
        "irnn_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_run_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=32), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _time("created_at"),
        sa.ForeignKeyConstraint(
            ["trial_run_id"],
            ["irnn_trial_runs.id"],
            name=op.f("fk_irnn_evaluations_trial_run_id_irnn_trial_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_irnn_evaluations")),
        sa.UniqueConstraint("trial_run_id", "split", name=op.f("uq_irnn_evaluations_trial_run_id_split")),
    )


def downgrade() -> None:
    # children first; dropping a table drops its indexes
    op.drop_table("irnn_evaluations")
    op.drop_table("irnn_trial_runs")
    op.drop_table("irnn_workers")
    op.drop_table("irnn_studies")
    op.drop_table("irnn_launches")
