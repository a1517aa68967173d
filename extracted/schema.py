"""The shared Order tables: the monolith and the extracted service read and write these alike."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "create_schema",
    "idempotency_keys",
    "metadata",
    "order_events",
    "order_items",
    "orders",
    "transition_keys",
]

metadata = MetaData()

# Money columns hold integer minor units; times are epoch milliseconds (UTC), which both
# SQLite and PostgreSQL store exactly and order correctly.
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("buyer_id", Integer, nullable=False, index=True),
    Column("buyer_email", String(254), nullable=False),
    Column("buyer_name", String(200), nullable=False),
    Column("seller_id", Integer, nullable=False, index=True),
    Column("seller_name", String(200), nullable=False),
    Column("shipping_address", Text, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("items_total_minor", BigInteger, nullable=False),
    Column("shipping_fee_minor", BigInteger, nullable=False),
    Column("buyer_protection_fee_minor", BigInteger, nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False, default=0),
    Column("tracking_number", String(100), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("delivered_at_ms", BigInteger, nullable=True),
    Column("version", Integer, nullable=False, default=1),
    Index("ix_orders_created", "created_at_ms", "id"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("sku", String(64), nullable=False),
    Column("title", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
)

order_events = Table(
    "order_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("type", String(16), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(100), nullable=True),
    Column("reason", String(500), nullable=True),
    Column("amount_minor", BigInteger, nullable=True),
    Column("at_ms", BigInteger, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("buyer_id", Integer, nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("buyer_id", "key", name="uq_idempotency_buyer_key"),
)

# Idempotency keys of transitions (ship ... refund), scoped to their order. Only the extracted
# service writes them; the monolith ignores the header (create_schema adds the table to an
# existing database).
transition_keys = Table(
    "transition_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("order_id", "key", name="uq_transition_order_key"),
)


async def create_schema(db_url: str) -> None:
    """Create the Order tables at `db_url` if they are missing."""
    from extracted.db import create_engine

    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()
