"""Alembic environment: the engine comes from the application, never from an ini file."""

from alembic import context

import billing.tables  # noqa: F401  (registers the billing tables on Base.metadata)
import storefront.models  # noqa: F401  (registers the marketplace tables on Base.metadata)
from metering import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
