"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 11:25:30.864368
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import loyalty.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "tiers",
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("earn_multiplier", sa.Float(), nullable=False),
        sa.Column("perks", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("code"),
        sa.UniqueConstraint("rank"),
    )
    op.create_table(
        "campaign_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("slot", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("planned", "running", "completed", "failed", name="runstatus", native_enum=False),
            nullable=False,
        ),
        sa.Column("holdout_share", sa.Float(), nullable=False),
        sa.Column("attribution_days", sa.Integer(), nullable=False),
        sa.Column("started_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("finished_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "slot", name="uq_campaign_runs_campaign_slot"),
    )
    op.create_table(
        "members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("first_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("last_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
        sa.Column("phone", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("time_zone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("tier", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("points_balance", sa.Integer(), nullable=False),
        sa.Column("joined_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("last_purchase_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("created_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("points_balance >= 0", name="ck_members_points_balance_non_negative"),
        sa.ForeignKeyConstraint(
            ["tier"],
            ["tiers.code"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_members_email"), ["email"], unique=False)
        batch_op.create_index("ix_members_tier_last_purchase", ["tier", "last_purchase_at"], unique=False)

    op.create_table(
        "offers",
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "discount_percent",
                "discount_amount",
                "bonus_points",
                "points_multiplier",
                "free_item",
                "early_access",
                name="offerkind",
                native_enum=False,
            ),
            nullable=False,
        ),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("cost_cents", sa.Integer(), nullable=False),
        sa.Column("min_tier", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("cooldown_days", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["min_tier"],
            ["tiers.code"],
        ),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "campaign_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("offer_code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("assigned_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.ForeignKeyConstraint(
            ["offer_code"],
            ["offers.code"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["campaign_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "member_id", name="uq_campaign_assignments_run_member"),
    )
    with op.batch_alter_table("campaign_assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaign_assignments_member_id"), ["member_id"], unique=False)

    op.create_table(
        "channel_consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column(
            "channel", sa.Enum("email", "sms", "push", name="channel", native_enum=False), nullable=False
        ),
        sa.Column("opted_in", sa.Boolean(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("recorded_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("member_id", "channel", name="uq_channel_consents_member_channel"),
    )
    op.create_table(
        "outbox_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column(
            "channel", sa.Enum("email", "sms", "push", name="channel", native_enum=False), nullable=False
        ),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("offer_code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "sending",
                "sent",
                "delivered",
                "bounced",
                "failed",
                "skipped",
                "unknown",
                name="outboxstatus",
                native_enum=False,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("provider_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("skip_reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("not_before", loyalty.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("sent_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.ForeignKeyConstraint(
            ["offer_code"],
            ["offers.code"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["campaign_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_messages_dispatch", ["status", "channel", "not_before"], unique=False
        )
        batch_op.create_index("ix_outbox_messages_member_created", ["member_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_messages_provider_id"), ["provider_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_messages_run_id"), ["run_id"], unique=False)

    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Enum("webpush", "fcm", name="pushkind", native_enum=False), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("p256dh", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("auth", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("last_success_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint"),
    )
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_push_subscriptions_member_id"), ["member_id"], unique=False)

    op.create_table(
        "tier_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("from_tier", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("to_tier", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column(
            "direction", sa.Enum("up", "down", name="tierdirection", native_enum=False), nullable=False
        ),
        sa.Column("qualifying_value", sa.Integer(), nullable=False),
        sa.Column("changed_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("handled_at", loyalty.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tier_changes_handled_at"), ["handled_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_tier_changes_member_id"), ["member_id"], unique=False)

    op.create_table(
        "transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("occurred_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_member_occurred", ["member_id", "occurred_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_transactions_occurred_at"), ["occurred_at"], unique=False)

    op.create_table(
        "delivery_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("provider_event_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("event", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("occurred_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox_messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider_event_id"),
    )
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_delivery_events_outbox_id"), ["outbox_id"], unique=False)

    op.create_table(
        "points_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("earn", "redeem", "expire", "adjust", name="pointskind", native_enum=False),
            nullable=False,
        ),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("transaction_id", sa.Integer(), nullable=True),
        sa.Column("created_at", loyalty.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("points_entries", schema=None) as batch_op:
        batch_op.create_index("ix_points_entries_member_created", ["member_id", "created_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("points_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_points_entries_member_created")

    op.drop_table("points_entries")
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_events_outbox_id"))

    op.drop_table("delivery_events")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transactions_occurred_at"))
        batch_op.drop_index("ix_transactions_member_occurred")

    op.drop_table("transactions")
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tier_changes_member_id"))
        batch_op.drop_index(batch_op.f("ix_tier_changes_handled_at"))

    op.drop_table("tier_changes")
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_subscriptions_member_id"))

    op.drop_table("push_subscriptions")
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_messages_run_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_messages_provider_id"))
        batch_op.drop_index("ix_outbox_messages_member_created")
        batch_op.drop_index("ix_outbox_messages_dispatch")

    op.drop_table("outbox_messages")
    op.drop_table("channel_consents")
    with op.batch_alter_table("campaign_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaign_assignments_member_id"))

    op.drop_table("campaign_assignments")
    op.drop_table("offers")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_index("ix_members_tier_last_purchase")
        batch_op.drop_index(batch_op.f("ix_members_email"))

    op.drop_table("members")
    op.drop_table("campaign_runs")
    op.drop_table("tiers")
    op.drop_table("campaigns")
