"""exports.precision and exports.watermarked: jetson-orin precisions, per-licence watermarks

Revision ID: 0011_edge
Revises: 0009_counters
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_edge"
down_revision = "0009_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("precision", sa.String(8), nullable=False,
                                   server_default="fp32"))
        batch.add_column(sa.Column("watermarked", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("watermarked")
        batch.drop_column("precision")
