"""``aimarket trace``: which licence a leaked model file was exported under."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer


def register(app: typer.Typer, token_of: Callable[..., str],
             check: Callable[[httpx.Response], None], default_url: str) -> None:
    """Add the ``trace`` verb to the ``aimarket`` command (same connection options as the
    other HTTP verbs)."""

    @app.command()
    def trace(
        model: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                              help="The .onnx file to trace")],
        url: Annotated[str, typer.Option(envvar="AIMARKET_URL")] = default_url,
        token: Annotated[str | None, typer.Option(envvar="AIMARKET_TOKEN")] = None,
        email: Annotated[str | None, typer.Option(envvar="AIMARKET_EMAIL")] = None,
        password: Annotated[str | None, typer.Option(envvar="AIMARKET_PASSWORD")] = None,
    ) -> None:
        """Recover the licence id and licensee from a model's watermark (sellers: your own
        listings; admins: all). Exits 1 when the model is untraceable."""
        with httpx.Client(base_url=url, timeout=600) as client:
            auth = {"Authorization": f"Bearer {token_of(client, token, email, password)}",
                    "Content-Type": "application/octet-stream"}
            r = client.post("/v1/trace", headers=auth, content=model.read_bytes())
            check(r)
        found = r.json()
        if not found["traced"]:
            typer.echo(f"{model}: untraceable (no watermark of a licence of your listings)")
            raise typer.Exit(1)
        typer.echo(f"{model}: license {found['license_id']}, licensed to "
                   f"{found['licensee']}, listing {found['listing']}, confidence "
                   f"{found['confidence']:.6f} (score {found['score']})")
