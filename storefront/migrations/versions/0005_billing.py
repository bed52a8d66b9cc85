"""billing: Stripe profiles, checkouts, the usage outbox, webhook events, payouts

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UNBILLED = sa.text("billed_in IS NULL AND kind = 'paid'")


def _ts(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("billed_in", sa.Integer, nullable=True))
    op.create_index("ix_usage_unbilled", "usage_events", ["account_id", "created_at"],
                    postgresql_where=_UNBILLED, sqlite_where=_UNBILLED)
    op.create_index("ix_usage_billed_in", "usage_events", ["billed_in"])
    op.create_table(
        "billing_profiles",
        sa.Column("account_id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=True, unique=True),
        sa.Column("subscription_id", sa.String(64), nullable=True),
        _ts("postpaid_since", True),
        _ts("postpaid_until", True),
        sa.Column("credit_line", sa.BigInteger, nullable=False),
        sa.Column("connect_account_id", sa.String(64), nullable=True, unique=True),
        sa.Column("payouts_enabled", sa.Boolean, nullable=False),
        _ts("sync_lock_until", True),
        sa.Column("sync_lock_token", sa.String(32), nullable=True),
        _ts("created_at"),
    )
    op.create_table(
        "billing_checkouts",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("account_id", sa.Integer, nullable=False, index=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("completed_at", True),
    )
    op.create_table(
        "billing_usage_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False, index=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        _ts("event_ts", True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        _ts("created_at"),
        _ts("sent_at", True),
    )
    op.create_table(
        "billing_stripe_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        _ts("received_at"),
    )
    op.create_table(
        "billing_payouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("seller_id", sa.Integer, nullable=False, index=True),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("earned", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("transfer_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        _ts("created_at"),
        _ts("paid_at", True),
        sa.UniqueConstraint("seller_id", "period"),
    )


def downgrade() -> None:
    for table in ("billing_payouts", "billing_stripe_events", "billing_usage_reports",
                  "billing_checkouts", "billing_profiles"):
        op.drop_table(table)
    op.drop_index("ix_usage_billed_in", "usage_events")
    op.drop_index("ix_usage_unbilled", "usage_events")
    op.drop_column("usage_events", "billed_in")
