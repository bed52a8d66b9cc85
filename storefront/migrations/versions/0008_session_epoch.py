"""accounts.session_epoch: revocable access tokens (logout, password change, admin)

Revision ID: 0008_session_epoch
Revises: 0007_ray
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_session_epoch"
down_revision = "0007_ray"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("session_epoch", sa.Integer, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("session_epoch")
