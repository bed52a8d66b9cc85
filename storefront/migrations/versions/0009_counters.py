"""listing_counters: calls served per listing, kept by the flusher; catalog indexes

Revision ID: 0009_counters
Revises: 0008_session_epoch

The catalog used to COUNT usage events per listing on every request. The flusher now adds each
batch's new calls to ``listing_counters`` in the transaction that writes them; this migration
backfills the counters from the events already in the ledger (one grouped scan).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_counters"
down_revision = "0008_session_epoch"
branch_labels = None
depends_on = None

CALL_KINDS = ("trial", "paid", "demo")  # metering.bulk.CALL_KINDS, frozen at this revision


def upgrade() -> None:
    op.create_table(
        "listing_counters",
        sa.Column("listing_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("calls_served", sa.BigInteger, nullable=False, server_default="0"),
    )
    kinds = ", ".join(f"'{k}'" for k in CALL_KINDS)
    op.execute(
        "INSERT INTO listing_counters (listing_id, calls_served) "
        f"SELECT listing_id, count(*) FROM usage_events WHERE kind IN ({kinds}) "
        "GROUP BY listing_id"
    )
    # Only the per-request COUNT read this index; every flushed event paid to maintain it.
    op.drop_index("ix_usage_listing", "usage_events")
    # The catalog: live versions by listing, listed listings by the sort keys.
    op.create_index("ix_versions_listing_live", "listing_versions",
                    ["listing_id", "status", "version"])
    op.create_index("ix_listings_status_created", "listings", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_listings_status_created", "listings")
    op.drop_index("ix_versions_listing_live", "listing_versions")
    op.create_index("ix_usage_listing", "usage_events", ["listing_id"])
    op.drop_table("listing_counters")
