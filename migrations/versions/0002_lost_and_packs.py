"""Trial runs: outcome ``lost`` (the worker died; the janitor re-queued the trial) and pack columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

``pack_id`` names the packed computation a trial run shared with others (NULL: it ran alone) and
``pack_size`` how many trials were in it when it started; ``train_s`` of a packed run is its share
of the pack's device time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "outcome IN ('complete', 'pruned', 'diverged', 'failed', 'interrupted')"
NEW = "outcome IN ('complete', 'pruned', 'diverged', 'failed', 'interrupted', 'lost')"


def upgrade() -> None:
    with op.batch_alter_table("irnn_trial_runs") as batch:
        batch.drop_constraint(op.f("ck_irnn_trial_runs_outcome"), type_="check")
        batch.create_check_constraint(op.f("ck_irnn_trial_runs_outcome"), NEW)
        batch.add_column(sa.Column("pack_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("pack_size", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE irnn_trial_runs SET outcome = 'failed' WHERE outcome = 'lost'")
    with op.batch_alter_table("irnn_trial_runs") as batch:
        batch.drop_column("pack_size")
        batch.drop_column("pack_id")
        batch.drop_constraint(op.f("ck_irnn_trial_runs_outcome"), type_="check")
        batch.create_check_constraint(op.f("ck_irnn_trial_runs_outcome"), OLD)
