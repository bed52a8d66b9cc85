"""edge_receipts: signed usage receipts of kits priced per edge call

Revision ID: 0012_edge_usage
Revises: 0011_edge
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_edge_usage"
down_revision = "0011_edge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_receipts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("export_id", sa.String(32), sa.ForeignKey("exports.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("period_start", sa.String(40), nullable=False),
        sa.Column("period_end", sa.String(40), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(120), nullable=False),
        sa.Column("event_id", sa.String(80), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("export_id", "seq"),
    )
    op.create_index("ix_edge_receipts_export_id", "edge_receipts", ["export_id"])


def downgrade() -> None:
    op.drop_index("ix_edge_receipts_export_id", "edge_receipts")
    op.drop_table("edge_receipts")
