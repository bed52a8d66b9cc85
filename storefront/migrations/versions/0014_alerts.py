"""Usage alerts: per-key thresholds, their crossed/armed state, the signed-webhook outbox

Revision ID: 0014_alerts
Revises: 0013_market

``alert_rules`` keeps a key's thresholds and webhook URL; the webhook secret is not stored but
derived (HMAC-SHA256 of the app's signing key and ``secret_salt``), so the database alone
cannot forge a signature. ``alert_states`` records each threshold crossing once (unique per
rule, kind and scope); ``alert_outbox`` holds the deliveries the sender retries with backoff.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_alerts"
down_revision = "0013_market"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("api_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False,
                  unique=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("daily_cap_percent", sa.Integer, nullable=True),
        sa.Column("credits_below", sa.BigInteger, nullable=True),
        sa.Column("trial_used_up", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("secret_salt", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alert_rules_account_id", "alert_rules", ["account_id"])
    op.create_table(
        "alert_states",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rule_id", sa.Integer, sa.ForeignKey("alert_rules.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(80), nullable=False),
        sa.Column("crossed", sa.Boolean, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.UniqueConstraint("rule_id", "kind", "scope", name="uq_alert_states"),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("rule_id", sa.Integer, sa.ForeignKey("alert_rules.id"), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_alert_outbox_rule_id", "alert_outbox", ["rule_id"])
    op.create_index("ix_alert_outbox_due", "alert_outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_outbox_due", "alert_outbox")
    op.drop_index("ix_alert_outbox_rule_id", "alert_outbox")
    op.drop_table("alert_outbox")
    op.drop_table("alert_states")
    op.drop_index("ix_alert_rules_account_id", "alert_rules")
    op.drop_table("alert_rules")
