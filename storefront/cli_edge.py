"""``aimarket trace``: which licence a leaked model file was exported under; ``aimarket kit
sync``: post a kit's edge-call receipts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer


def register(app: typer.Typer, token_of: Callable[..., str],
             check: Callable[[httpx.Response], None], default_url: str) -> None:
    """Add the ``trace`` verb and ``kit sync`` to the ``aimarket`` command (same connection
    options as the other HTTP verbs)."""
    kit = typer.Typer(help="Nano Kit / Jetson Orin bundles on the device", no_args_is_help=True)
    app.add_typer(kit, name="kit")

    @kit.command("sync")
    def sync(
        folder: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                               help="The unpacked bundle the runner runs in")],
        url: Annotated[str, typer.Option(envvar="AIMARKET_URL")] = default_url,
    ) -> None:
        """Post the receipts the kit's runner wrote (usage/receipts/) that the marketplace has
        not accepted yet; they are charged per edge call. No login: each is signed with the
        export's own key. Exits 1 when the marketplace refuses them (the reason is printed)."""
        from export import receipts

        info = json.loads((folder / "edge.json").read_text())
        todo = receipts.pending(folder)
        if not todo:
            typer.echo(f"{folder}: no new receipts")
            return
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(0, len(todo), 500):
                part = todo[i:i + 500]
                r = client.post("/v1/edge-usage",
                                json={"license_id": info["license_id"], "receipts": part})
                check(r)
                receipts.mark_synced(folder, part[-1]["seq"])
                got = r.json()
                typer.echo(f"receipts {part[0]['seq']}..{part[-1]['seq']}: {got['calls']} "
                           f"edge calls, charged {got['charged']} USD")

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
