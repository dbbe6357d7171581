"""campaign_outcomes: attributed outcome and message facts per (run, member)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import loyalty.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("treated", sa.Boolean(), nullable=False),
        sa.Column("offer_code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.Enum("email", "sms", "push", name="channel", native_enum=False), nullable=True),
        sa.Column("sent_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("delivered_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("opened_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("clicked_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("converted", sa.Boolean(), nullable=False),
        sa.Column("purchases", sa.Integer(), nullable=False),
        sa.Column("revenue_cents", sa.Integer(), nullable=False),
        sa.Column("first_purchase_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("window_end", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("counted_until", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("attributed_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"]),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox_messages.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["campaign_runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "member_id", name="uq_campaign_outcomes_run_member"),
    )
    with op.batch_alter_table("campaign_outcomes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaign_outcomes_member_id"), ["member_id"], unique=False)
    # Attribution finds each assignment's message by (run, member): without this index every lookup
    # scanned the run's messages, quadratic in the run's size.
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_messages_run_member", ["run_id", "member_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_messages_run_member")
    with op.batch_alter_table("campaign_outcomes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaign_outcomes_member_id"))

    op.drop_table("campaign_outcomes")
