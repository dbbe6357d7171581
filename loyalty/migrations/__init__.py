"""Alembic migrations for the loyalflow schema (applied by ``loyalflow db upgrade``)."""
