"""Migrations build the schema the models describe, on every backend, up and down."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from loyalty.db import current_revision, downgrade, upgrade


def test_migrated_schema_matches_the_models(bare_engine: Engine) -> None:
    with bare_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_downgrade_to_base_and_upgrade_again(bare_engine: Engine) -> None:
    head = current_revision(bare_engine)
    assert head is not None
    downgrade(bare_engine, "base")
    assert current_revision(bare_engine) is None
    assert "members" not in sa.inspect(bare_engine).get_table_names()
    upgrade(bare_engine)
    assert current_revision(bare_engine) == head
    assert {"members", "points_entries", "outbox_messages", "tier_changes"} <= set(
        sa.inspect(bare_engine).get_table_names())


def test_audience_indexes_exist(bare_engine: Engine) -> None:
    inspector = sa.inspect(bare_engine)
    member_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("members")}
    assert ("tier", "last_purchase_at") in member_indexes
    outbox_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("outbox_messages")}
    assert ("status", "channel", "not_before") in outbox_indexes
