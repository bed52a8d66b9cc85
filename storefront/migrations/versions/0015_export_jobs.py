"""Bundles built on the site in the background; Checkout Sessions that buy an item

Revision ID: 0015_export_jobs
Revises: 0014_alerts

``export_jobs``: one row per bundle a buyer asked the site to build (queued -> building ->
done with its export, or failed with the reason). ``billing_checkouts.item``: what a Checkout
Session of a purpose other than credits pays for (an export licence: the listing's slug).
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_export_jobs"
down_revision = "0014_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("buyer_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("slug", sa.String(80), nullable=False),
        sa.Column("target", sa.String(20), nullable=False),
        sa.Column("precision", sa.String(8), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("export_id", sa.String(32), sa.ForeignKey("exports.id"), nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_export_jobs_buyer_id", "export_jobs", ["buyer_id"])
    # plain ALTER TABLE (no batch copy): a nullable column needs none
    op.add_column("billing_checkouts", sa.Column("item", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("billing_checkouts") as batch:
        batch.drop_column("item")
    op.drop_index("ix_export_jobs_buyer_id", "export_jobs")
    op.drop_table("export_jobs")
