"""The market: buyers' reviews, each listing's rating, sellers' public handles, deprecation

Revision ID: 0013_market
Revises: 0012_edge_usage

``listing_reviews`` holds buyers' ratings (one per buyer and listing; the table ``reviews`` is
the moderators' audit log since 0001). ``listings.rating_count`` / ``rating_milli`` (the
average in thousandths of a star over visible reviews) are written by the app in the
transaction that changes a review, so a catalog page sorted by rating stays one index scan of
``listings``. ``accounts.handle`` is the seller's unique public name (backfilled here from the
name, de-duplicated; never from the e-mail). ``listing_versions.deprecated_at`` / ``sunset_at``: a
deprecated version keeps answering pinned calls until its sunset, then answers 410.

Columns are added with plain ALTER TABLE (no batch copy): recreating ``listing_versions`` on
SQLite would drop the triggers of 0009, and ``listings`` / ``accounts`` carry foreign keys.
"""

import re
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0013_market"
down_revision = "0012_edge_usage"
branch_labels = None
depends_on = None


_RESERVED = frozenset({"admin", "api", "account", "login", "logout", "signup", "seller",
                       "sellers", "static", "try", "models", "support", "aimarket", "root"})


def _handle_base(name: str, email: str) -> str:
    """storefront.handles.handle_base, frozen at this revision: never from the e-mail."""
    base = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:30].strip("-")
    if len(base) >= 3 and base not in _RESERVED and (name or "").lower() != \
            email.split("@")[0].lower():
        return base
    return f"member-{secrets.token_hex(3)}"


def upgrade() -> None:
    op.create_table(
        "listing_reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("listing_id", sa.Integer, sa.ForeignKey("listings.id"), nullable=False),
        sa.Column("buyer_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("stars", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reply", sa.Text, nullable=True),
        sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("listing_id", "buyer_id", name="uq_listing_reviews_buyer"),
        sa.CheckConstraint("stars BETWEEN 1 AND 5", name="ck_listing_reviews_stars"),
    )
    op.create_index("ix_listing_reviews_listing", "listing_reviews", ["listing_id", "id"])

    op.add_column("listings", sa.Column("rating_count", sa.Integer, nullable=False,
                                        server_default="0"))
    op.add_column("listings", sa.Column("rating_milli", sa.Integer, nullable=False,
                                        server_default="0"))
    op.create_index("ix_catalog_rating", "listings",
                    ["status", sa.text("rating_milli DESC"), sa.text("rating_count DESC"), "id"],
                    sqlite_where=sa.text("live_version_id IS NOT NULL"),
                    postgresql_where=sa.text("live_version_id IS NOT NULL"))

    op.add_column("accounts", sa.Column("handle", sa.String(40), nullable=True))
    bind = op.get_bind()
    taken: set[str] = set()
    rows = bind.execute(sa.text("SELECT id, name, email FROM accounts ORDER BY id")).all()
    for account_id, name, email in rows:
        base = _handle_base(name or "", email or "")
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        bind.execute(sa.text("UPDATE accounts SET handle = :h WHERE id = :i"),
                     {"h": candidate, "i": account_id})
    op.create_index("ix_accounts_handle", "accounts", ["handle"], unique=True)

    op.add_column("listing_versions", sa.Column("deprecated_at", sa.DateTime(timezone=True),
                                                nullable=True))
    op.add_column("listing_versions", sa.Column("sunset_at", sa.DateTime(timezone=True),
                                                nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), as 0009's downgrade: no batch copies.
    for column in ("sunset_at", "deprecated_at"):
        op.drop_column("listing_versions", column)
    op.drop_index("ix_accounts_handle", "accounts")
    op.drop_column("accounts", "handle")
    op.drop_index("ix_catalog_rating", "listings")
    for column in ("rating_milli", "rating_count"):
        op.drop_column("listings", column)
    op.drop_index("ix_listing_reviews_listing", "listing_reviews")
    op.drop_table("listing_reviews")
