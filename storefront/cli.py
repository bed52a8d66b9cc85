"""The ``aimarket`` command: run the marketplace, publish models."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer

app = typer.Typer(help="aimarket: AI-model marketplace with pay-per-call inference.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

DEFAULT_URL = "http://127.0.0.1:8000"


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
) -> None:
    """Run the marketplace (embedded SQLite and Redis unless configured otherwise)."""
    import uvicorn

    from .app import create_app
    from .config import Settings

    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    typer.echo(f"aimarket: data in {settings.data_dir.resolve()}, serving on http://{host}:{port}")
    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log,
                log_level="info", timeout_graceful_shutdown=10)


def _token(client: httpx.Client, token: str | None, email: str | None,
           password: str | None) -> str:
    if token:
        return token
    if not (email and password):
        raise typer.BadParameter("give --token, or --email and --password (or AIMARKET_TOKEN)")
    r = client.post("/v1/auth/token", data={"username": email, "password": password})
    _check(r)
    return str(r.json()["access_token"])


def _check(r: httpx.Response) -> None:
    if r.is_success:
        return
    try:
        err = r.json()["error"]
        msg = f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        msg = r.text[:500]
    typer.echo(f"error ({r.status_code}) {msg}", err=True)
    raise typer.Exit(1)


@app.command()
def publish(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx file")],
    manifest: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="YAML or JSON")],
    slug: Annotated[str | None, typer.Option(help="Add a version to this listing")] = None,
    url: Annotated[str, typer.Option(envvar="AIMARKET_URL")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(envvar="AIMARKET_TOKEN")] = None,
    email: Annotated[str | None, typer.Option(envvar="AIMARKET_EMAIL")] = None,
    password: Annotated[str | None, typer.Option(envvar="AIMARKET_PASSWORD")] = None,
) -> None:
    """Upload a model with its manifest for review (over HTTP, as a seller)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        bearer = _token(client, token, email, password)
        with model.open("rb") as f:
            r = client.post(
                "/v1/models", headers={"Authorization": f"Bearer {bearer}"},
                files={"model": (model.name, f, "application/octet-stream"),
                       "manifest": (manifest.name, manifest.read_bytes(), "application/yaml")},
                data={"slug": slug} if slug else None,
            )
    _check(r)
    typer.echo(json.dumps(r.json(), indent=2))


def main() -> None:
    app()
