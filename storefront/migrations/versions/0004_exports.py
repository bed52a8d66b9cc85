"""purchases (export licenses), exports, kit orders

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "purchases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("buyer_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("listing_id", sa.Integer, sa.ForeignKey("listings.id"), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("buyer_id", "listing_id"),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("buyer_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False,
                  index=True),
        sa.Column("listing_version_id", sa.Integer, sa.ForeignKey("listing_versions.id"),
                  nullable=False),
        sa.Column("purchase_id", sa.String(32), sa.ForeignKey("purchases.id"), nullable=False),
        sa.Column("target", sa.String(20), nullable=False),
        sa.Column("license_id", sa.String(32), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("agreement", sa.Float, nullable=False),
        sa.Column("max_diff", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "kit_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("buyer_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False,
                  index=True),
        sa.Column("export_id", sa.String(32), sa.ForeignKey("exports.id"), nullable=False),
        sa.Column("shipping_address", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tracking", sa.String(100), nullable=False, server_default=""),
        sa.Column("history", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kit_orders")
    op.drop_table("exports")
    op.drop_table("purchases")
