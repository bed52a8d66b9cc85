"""rate limits and spend caps per API key

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_limit_rps", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_limit_burst", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("spend_cap_day", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("spend_cap_month", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for name in ("spend_cap_month", "spend_cap_day", "rate_limit_burst", "rate_limit_rps"):
            batch.drop_column(name)
