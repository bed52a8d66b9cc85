"""upload review: fingerprints, findings, license and attestation per version

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("listing_versions") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("sketch", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("findings", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("license", sa.String(100), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("rights_attested_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.create_index("ix_listing_versions_fingerprint", ["fingerprint"])


def downgrade() -> None:
    with op.batch_alter_table("listing_versions") as batch:
        batch.drop_index("ix_listing_versions_fingerprint")
        for name in ("rights_attested_at", "license", "findings", "sketch", "fingerprint"):
            batch.drop_column(name)
