"""listing_counters (calls served per listing, kept by the flusher); each listing's newest live
version on its own row (kept by triggers); the catalog's indexes

Revision ID: 0009_counters
Revises: 0008_session_epoch

The catalog used to COUNT usage events per listing and to compute every listing's newest live
version on every request. Now the flusher adds each batch's new calls to ``listing_counters``
in the transaction that writes them (backfilled here from the events already in the ledger), and
``listings.live_version_id`` / ``live_price`` / ``live_latency_us`` name the newest live
version, kept by triggers on ``listing_versions`` whatever code changes a version, so a catalog
page is one indexed scan of ``listings``. (On SQLite, a later migration that *recreates*
``listing_versions`` in batch mode drops these triggers: it must create them again.)
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_counters"
down_revision = "0008_session_epoch"
branch_labels = None
depends_on = None

CALL_KINDS = ("trial", "paid", "demo")  # metering.bulk.CALL_KINDS, frozen at this revision
_NEWEST_LIVE = ("(SELECT v.id, v.price, v.latency_us FROM listing_versions v "
                "WHERE v.listing_id = listings.id AND v.status = 'live' "
                "ORDER BY v.version DESC LIMIT 1)")
_REFRESH = ("UPDATE listings SET (live_version_id, live_price, live_latency_us) = "
            f"{_NEWEST_LIVE} WHERE listings.id = {{}}")
# Every listing with a version has a counter row (0 calls at first): "most used" is then an
# index scan of listing_counters that stops at the page.
_COUNTER_ROW = ("INSERT INTO listing_counters (listing_id, calls_served) VALUES "
                "(NEW.listing_id, 0) ON CONFLICT (listing_id) DO NOTHING")
_PG_FUNCTION = f"""
CREATE FUNCTION listing_live_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN {_COUNTER_ROW}; END IF;
  IF TG_OP <> 'INSERT' THEN {_REFRESH.format('OLD.listing_id')}; END IF;
  IF TG_OP <> 'DELETE' THEN {_REFRESH.format('NEW.listing_id')}; END IF;
  RETURN NULL;
END $$
"""
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER listing_live_insert AFTER INSERT ON listing_versions BEGIN "
    f"{_COUNTER_ROW}; {_REFRESH.format('NEW.listing_id')}; END",
    "CREATE TRIGGER listing_live_update AFTER UPDATE OF listing_id, version, status, price, "
    f"latency_us ON listing_versions BEGIN {_REFRESH.format('OLD.listing_id')}; "
    f"{_REFRESH.format('NEW.listing_id')}; END",
    "CREATE TRIGGER listing_live_delete AFTER DELETE ON listing_versions BEGIN "
    f"{_REFRESH.format('OLD.listing_id')}; END",
)


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
    op.execute("INSERT INTO listing_counters (listing_id, calls_served) SELECT id, 0 FROM "
               "listings WHERE id NOT IN (SELECT listing_id FROM listing_counters)")
    # Only the per-request COUNT read this index; every flushed event paid to maintain it.
    op.drop_index("ix_usage_listing", "usage_events")

    with op.batch_alter_table("listings") as batch:
        batch.add_column(sa.Column("live_version_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("live_price", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("live_latency_us", sa.Integer, nullable=True))
    op.execute(f"UPDATE listings SET (live_version_id, live_price, live_latency_us) = "
               f"{_NEWEST_LIVE}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute("CREATE TRIGGER listing_live AFTER INSERT OR UPDATE OR DELETE ON "
                   "listing_versions FOR EACH ROW EXECUTE FUNCTION listing_live_refresh()")
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    # The catalog's orders, each an index scan that stops at the page: only listings with a
    # live version are in them, and each ends with the id that breaks ties, so counting and
    # deep pages read the index alone.
    for name, cols in (("created", [sa.text("created_at DESC"), "id"]),
                       ("price", ["live_price", "id"]), ("latency", ["live_latency_us", "id"]),
                       ("title", ["title", "id"]), ("live", ["category", "task", "id"])):
        op.create_index(f"ix_catalog_{name}", "listings", ["status", *cols],
                        sqlite_where=sa.text("live_version_id IS NOT NULL"),
                        postgresql_where=sa.text("live_version_id IS NOT NULL"))
    op.create_index("ix_counters_calls", "listing_counters",
                    [sa.text("calls_served DESC"), "listing_id"])


def downgrade() -> None:
    op.drop_index("ix_counters_calls", "listing_counters")
    for name in ("created", "price", "latency", "title", "live"):
        op.drop_index(f"ix_catalog_{name}", "listings")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER listing_live ON listing_versions")
        op.execute("DROP FUNCTION listing_live_refresh()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER listing_live_{name}")
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35): a batch copy of listings would break its
    # foreign keys.
    for column in ("live_latency_us", "live_price", "live_version_id"):
        op.drop_column("listings", column)
    op.create_index("ix_usage_listing", "usage_events", ["listing_id"])
    op.drop_table("listing_counters")
