"""measurement: lifetime fits, member lifetime, survey responses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import loyalty.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lifetime_fits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("as_of", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("fitted_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "member_lifetime",
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("fit_id", sa.Integer(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("recency_days", sa.Float(), nullable=False),
        sa.Column("age_days", sa.Float(), nullable=False),
        sa.Column("monetary_cents", sa.Integer(), nullable=False),
        sa.Column("p_alive", sa.Float(), nullable=False),
        sa.Column("expected_purchases_12m", sa.Float(), nullable=False),
        sa.Column("clv_12m_cents", sa.Integer(), nullable=False),
        sa.Column("computed_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["fit_id"],
            ["lifetime_fits.id"],
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("member_id"),
    )
    with op.batch_alter_table("member_lifetime", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_member_lifetime_fit_id"), ["fit_id"], unique=False)

    op.create_table(
        "survey_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invitation_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("survey", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("verbatim", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("responded_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("automated_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("invitation_key"),
    )
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_survey_responses_member_id"), ["member_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_survey_responses_member_id"))

    op.drop_table("survey_responses")
    with op.batch_alter_table("member_lifetime", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_member_lifetime_fit_id"))

    op.drop_table("member_lifetime")
    op.drop_table("lifetime_fits")
