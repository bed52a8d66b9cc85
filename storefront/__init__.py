"""The storefront: the FastAPI app and CLI, the only composition root (nothing imports it)."""

from importlib.metadata import version

VERSION = version("aimarket")  # pyproject.toml's, the one place it is written
