"""The ``aimarket`` command: run the marketplace, publish models."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from . import cli_edge

app = typer.Typer(help="aimarket: AI-model marketplace with pay-per-call inference.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

DEFAULT_URL = "http://127.0.0.1:8000"


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes on the one port (the parent runs the embedded Valkey, "
        "the ledger flusher and the billing sender)")] = 1,
) -> None:
    """Run the marketplace (embedded SQLite and Redis unless configured otherwise)."""
    import uvicorn

    from .app import create_app
    from .config import Settings
    from .embedded import EmbeddedStoresInUse, refuse_if_in_use
    from .throttle import trusted_networks
    from .workers import WorkersRefused, run_workers

    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    typer.echo(f"aimarket: data in {settings.data_dir.resolve()}, serving on http://{host}:{port}")
    # Forwarded headers count only from AIMARKET_TRUSTED_PROXIES (never uvicorn's own default
    # list or $FORWARDED_ALLOW_IPS); the app reads the client address the same way
    # (storefront.throttle.client_address).
    proxies = [str(net) for net in trusted_networks(settings.trusted_proxies)]
    options: dict[str, Any] = {"access_log": access_log, "log_level": "info",
                               "timeout_graceful_shutdown": 10,
                               "proxy_headers": bool(proxies), "forwarded_allow_ips": proxies}
    try:
        if workers > 1:
            run_workers(settings, host=host, port=port, workers=workers, **options)
            return
        if settings.redis_url is None:
            refuse_if_in_use(settings)  # before the app starts: a message, not a traceback
    except (EmbeddedStoresInUse, WorkersRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(create_app(settings), host=host, port=port, **options)


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
    license: Annotated[str | None, typer.Option(help="e.g. MIT, Apache-2.0, proprietary "
                                                "(else the manifest's 'license')")] = None,
    attest: Annotated[bool, typer.Option(
        "--attest", help="I hold the rights to publish this model (required)")] = False,
    slug: Annotated[str | None, typer.Option(help="Add a version to this listing")] = None,
    url: Annotated[str, typer.Option(envvar="AIMARKET_URL")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(envvar="AIMARKET_TOKEN")] = None,
    email: Annotated[str | None, typer.Option(envvar="AIMARKET_EMAIL")] = None,
    password: Annotated[str | None, typer.Option(envvar="AIMARKET_PASSWORD")] = None,
) -> None:
    """Upload a model with its manifest for review (over HTTP, as a seller)."""
    if not attest and sys.stdin.isatty():
        attest = typer.confirm("Do you hold the rights to publish this model?")
    with httpx.Client(base_url=url, timeout=300) as client:
        bearer = _token(client, token, email, password)
        with model.open("rb") as f:
            r = client.post(
                "/v1/models", headers={"Authorization": f"Bearer {bearer}"},
                files={"model": (model.name, f, "application/octet-stream"),
                       "manifest": (manifest.name, manifest.read_bytes(), "application/yaml")},
                data={k: v for k, v in (("slug", slug), ("license", license),
                                        ("attest_rights", "true" if attest else None)) if v},
            )
    _check(r)
    typer.echo(json.dumps(r.json(), indent=2))


@app.command()
def example(
    name: Annotated[str, typer.Argument(help="digits | iris | wine | diabetes")] = "digits",
    out_dir: Annotated[Path, typer.Option(help="Where to write the files")] = Path("."),
    title: Annotated[str, typer.Option(help="Listing title in the manifest")] = "My digits",
) -> None:
    """Write a real example model (MODEL.onnx), its manifest (MODEL.yaml) and a v2 request
    body (request.json): everything a seller needs to try publishing."""
    import yaml

    from . import demo

    builders = {"digits": demo.digits, "iris": demo.iris, "wine": demo.wine,
                "diabetes": demo.diabetes}
    if name not in builders:
        raise typer.BadParameter(f"choose one of {', '.join(builders)}")
    data, manifest = builders[name]()
    manifest["title"] = title
    manifest["pricing"] = {**manifest["pricing"], "trial_calls": 3}
    manifest["license"] = "MIT"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.onnx").write_bytes(data)
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    width = manifest["inputs"][0]["shape"][1]
    row = demo.sample_row(name)
    body = {"inputs": [{"name": "X", "shape": [1, width], "datatype": "FP32", "data": row}]}
    (out_dir / "request.json").write_text(json.dumps(body))
    typer.echo(f"wrote {out_dir / (name + '.onnx')}, {out_dir / (name + '.yaml')}, "
               f"{out_dir / 'request.json'}")


@app.command("export")
def export_model(
    slug: Annotated[str, typer.Argument(help="The listing to export")],
    target: Annotated[str, typer.Option(
        help="onnx | onnx-int8 | onnx-fp16 | nano-kit | jetson-orin")] = "onnx",
    precision: Annotated[str | None, typer.Option(
        help="fp32 | fp16 | int8, for targets that offer several (jetson-orin: fp16 or int8)")]
    = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Bundle file")] = None,
    version: Annotated[int | None, typer.Option(help="A live version (default newest)")] = None,
    url: Annotated[str, typer.Option(envvar="AIMARKET_URL")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(envvar="AIMARKET_TOKEN")] = None,
    email: Annotated[str | None, typer.Option(envvar="AIMARKET_EMAIL")] = None,
    password: Annotated[str | None, typer.Option(envvar="AIMARKET_PASSWORD")] = None,
) -> None:
    """Build a signed bundle of a model you hold the export license of, and download it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with httpx.Client(base_url=url, timeout=600) as client:
        auth = {"Authorization": f"Bearer {_token(client, token, email, password)}"}
        r = client.post("/v1/exports", headers=auth,
                        json={"slug": slug, "target": target, "version": version,
                              **({"precision": precision} if precision else {})})
        _check(r)
        exp = r.json()
        dest = output or Path(f"{slug}-v{exp['version']}-{target}.zip")
        with client.stream("GET", exp["download"], headers=auth) as resp, \
                Progress("[progress.description]{task.description}", BarColumn(),
                         DownloadColumn(), TransferSpeedColumn()) as bar, dest.open("wb") as f:
            if not resp.is_success:
                resp.read()
                _check(resp)
            task = bar.add_task(dest.name, total=int(resp.headers.get("content-length", 0)))
            for chunk in resp.iter_bytes():
                f.write(chunk)
                bar.update(task, advance=len(chunk))
    typer.echo(f"{dest}: license {exp['license_id']}, agreement {exp['agreement']:.4f}, "
               f"largest output difference {exp['max_diff']:.3g}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    public_key: Annotated[Path | None, typer.Option(help="PEM file of the platform's key")]
    = None,
    url: Annotated[str, typer.Option(envvar="AIMARKET_URL", help="Else fetch it from here")]
    = DEFAULT_URL,
) -> None:
    """Check a bundle's signature, checksums and watermark; print its licensee."""
    from export import VerifyError
    from export import verify as verify_bundle

    if public_key is not None:
        pem = public_key.read_text()
    else:
        try:
            r = httpx.get(f"{url}/v1/exports/public-key", timeout=30)
        except httpx.HTTPError as exc:
            typer.echo(f"error: cannot fetch the public key from {url}: {exc}", err=True)
            raise typer.Exit(1) from exc
        _check(r)
        pem = r.json()["public_key_pem"]
    try:
        lic = verify_bundle(bundle, pem)
    except VerifyError as exc:
        typer.echo(f"INVALID: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"OK: licensed to {lic['licensee']} — {lic['listing']} v{lic['version']} "
               f"({lic['target']}), license {lic['license_id']}, issued {lic['issued_at']}")


ledger = typer.Typer(help="The SQL ledger: flush usage events into it, reconcile Redis with it.",
                     no_args_is_help=True)
app.add_typer(ledger, name="ledger")


@ledger.command("flush")
def ledger_flush(
    parent_pid: Annotated[int | None, typer.Option(help="Stop when this process is gone")]
    = None,
) -> None:
    """Run a ledger flusher until stopped (SIGTERM/SIGINT); several may run at once."""
    import signal
    import threading

    from .config import Settings
    from .ops import ledger_parts

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid is not None:  # an app's child: never outlive the app, even a killed one

        def watch() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent_pid:
                    stop.set()

        threading.Thread(target=watch, daemon=True).start()
    with ledger_parts(settings) as (_, _, flusher):
        typer.echo(f"flushing {len(flusher.streams)} streams into the ledger as "
                   f"{flusher.consumer}")
        flusher.run(stop, block_ms=settings.flush_interval_ms,
                    gather_ms=settings.flush_gather_ms)


@ledger.command("reconcile")
def ledger_reconcile(
    repair: Annotated[bool, typer.Option(help="Set drifted Redis counters to the ledger's")]
    = False,
) -> None:
    """Compare every account's Redis counters with the SQL ledger; report (and repair) drift."""
    from rich.console import Console
    from rich.table import Table

    from metering import format_usd, reconcile

    from .config import Settings
    from .ops import ledger_parts

    settings = Settings()
    with ledger_parts(settings) as (client, engine, flusher):
        checked, drifts, busy = reconcile(client, engine, flusher,
                                          namespace=settings.redis_namespace, repair=repair)
    console = Console()
    if busy:
        console.print(f"{len(busy)} accounts kept changing while they were read (calls in "
                      f"flight) and were not compared: run again when traffic is quieter "
                      f"(accounts {', '.join(map(str, busy[:20]))}).")
    if not drifts:
        console.print(f"{checked} accounts checked: Redis agrees with the ledger.")
        return
    table = Table("account", "counter", "redis", "ledger", "repaired")
    for d in drifts:
        fmt = format_usd if d.counter == "credits" else str
        table.add_row(str(d.account_id), d.counter, fmt(d.redis_value), fmt(d.ledger_value),
                      "yes" if d.repaired else "no")
    console.print(table)
    console.print(f"{checked} accounts checked, {len(drifts)} counters drifted"
                  + ("" if repair else "; run with --repair to set them to the ledger's"))


billing_cli = typer.Typer(help="Stripe billing: push postpaid usage, pay sellers.",
                          no_args_is_help=True)
app.add_typer(billing_cli, name="billing")


def _stripe_settings() -> Any:
    from .config import Settings

    settings = Settings()
    if settings.stripe_api_key is None:
        typer.echo("error: billing with Stripe needs AIMARKET_STRIPE_API_KEY (this server "
                   "bills from the ledger only)", err=True)
        raise typer.Exit(2)
    return settings


@billing_cli.command("sync")
def billing_sync(
    every: Annotated[float, typer.Option(
        help="Keep running (a billing sender): sync again every this many seconds until "
        "SIGTERM; a failed round is logged and retried on the next; 0: sync once")] = 0,
) -> None:
    """Push pending postpaid usage to Stripe's meter (safe to rerun: nothing is sent twice)."""
    import asyncio

    from .ops import run_billing

    settings = _stripe_settings()
    if every > 0:
        import signal
        import threading

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            try:
                typer.echo(json.dumps(asyncio.run(run_billing(settings,
                                                              lambda b: b.sync())).__dict__))
            except Exception:
                logging.exception("billing sync failed; pending usage stays in the outbox")
            stop.wait(every)
        return
    result = asyncio.run(run_billing(settings, lambda b: b.sync()))
    typer.echo(json.dumps(result.__dict__))
    if result.failed:
        typer.echo(f"{result.failed} customer(s) not synced: Stripe refused or was "
                   "unreachable; their usage stays pending for the next run", err=True)
        raise typer.Exit(1)


@billing_cli.command("payouts")
def billing_payouts(
    period: Annotated[str | None, typer.Option(help="YYYY-MM; default the previous month")]
    = None,
) -> None:
    """Pay every seller their share for a month as Stripe Transfers (safe to rerun)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from serving import AimarketError

    from .ops import run_billing

    settings = _stripe_settings()
    if period is None:
        period = f"{datetime.now(UTC).replace(day=1) - timedelta(days=1):%Y-%m}"

    async def job(b: Any) -> Any:
        return await asyncio.to_thread(b.payouts, period)

    try:
        results = asyncio.run(run_billing(settings, job))
    except AimarketError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    for r in results:
        typer.echo(json.dumps(r.__dict__))
    if any(r.status == "pending" for r in results):
        raise typer.Exit(1)


triton_cli = typer.Typer(help="Triton Inference Server: the model repository of live versions.",
                         no_args_is_help=True)
app.add_typer(triton_cli, name="triton")


@triton_cli.command("export-repo")
def triton_export_repo(
    out: Annotated[Path, typer.Argument(file_okay=False, help="The repository folder")],
) -> None:
    """Write a standard Triton model repository (onnxruntime_onnx) of every live version."""
    from .config import Settings
    from .db import make_engine
    from .triton_export import export_repository

    settings = Settings()
    engine = make_engine(settings.sqlalchemy_url)
    for folder in export_repository(engine, settings.data_dir, out):
        typer.echo(str(folder))
    engine.dispose()


def main() -> None:
    app()


cli_edge.register(app, _token, _check, DEFAULT_URL)


if __name__ == "__main__":
    main()
