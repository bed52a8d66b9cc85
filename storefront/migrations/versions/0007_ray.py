"""listing_serving: per-listing serving options (replicas, batching) for Ray Serve

Revision ID: 0007_ray
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_ray"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "listing_serving",
        sa.Column("listing_id", sa.Integer, sa.ForeignKey("listings.id"), primary_key=True),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("updated_by", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("listing_serving")
