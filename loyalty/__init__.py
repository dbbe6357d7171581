"""loyalflow's domain: tables, ledger, tiers, imports, outbox, rendering and the CLI.

This is the only package that knows the database tables; ``flows`` orchestrates it,
``recommenders`` and ``channels`` know nothing of it.
"""
