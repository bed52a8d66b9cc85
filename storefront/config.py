"""The one Settings object (environment prefix ``AIMARKET_``), passed down from the CLI/app."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering import to_micro
from serving import machine_memory

MIN_SECRET_BYTES = 32
MIN_RPS = 0.001  # a slower rate is no rate: GCRA's interval (1/rps) overflows


class Settings(BaseSettings):
    """Every knob of an aimarket server. Unset URLs mean the embedded default."""

    model_config = SettingsConfigDict(env_prefix="AIMARKET_", extra="ignore")

    data_dir: Path = Field(Path(".aimarket"), description="Models, SQLite, embedded Redis data")
    group_readable_models: bool = Field(
        False, description="Model files readable by the data dir's group (e.g. serving workers "
        "of another user); everything else in the data dir stays private to its owner"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    redis_url: str | None = Field(None, description="Redis URL; default an embedded Valkey server")
    redis_namespace: str = Field("am:", description="Prefix of every Redis key aimarket writes")
    redis_cluster: bool = Field(
        False, description="redis_url is a node of a Redis Cluster (the client finds the "
        "others): metering runs on the cluster, its keys sharded by hash tags"
    )
    serving_backend: Literal["local", "ray", "triton"] = Field(
        "local", description="Engine that runs models: local onnxruntime, Ray Serve or Triton"
    )
    serving_backends: str = Field(
        "", description="Engines a listing may choose among (comma list); default: "
        "serving_backend alone"
    )
    triton_url: str | None = Field(
        None, description="Use this Triton server (host:port of its HTTP API) instead of "
        "starting the bundled tritonserver"
    )
    triton_model_repository: Path | None = Field(
        None, description="The model repository the Triton server at triton_url reads "
        "(explicit model control); default data_dir/triton/models"
    )
    triton_repository_format: Literal["onnxruntime", "python"] = Field(
        "onnxruntime", description="Models written for triton_url: onnxruntime (a full Triton "
        "image) or python (Python-backend models running onnxruntime)"
    )
    ray_address: str | None = Field(
        None, description="Join this Ray cluster (its GCS host:port); default a local Ray"
    )
    platform_fee_bps: int = Field(2000, ge=0, le=10_000, description="Platform fee, basis points")
    admin_email: str | None = Field(None, description="Bootstrap admin account e-mail")
    admin_password: SecretStr | None = Field(None, description="Bootstrap admin password")
    secret_key: SecretStr | None = Field(
        None, description="Signs access tokens; generated into data_dir when unset"
    )
    access_token_minutes: int = Field(1440, ge=1, description="Access token lifetime")
    max_upload_mb: int = Field(200, ge=1, description="Largest accepted model upload")
    smoke_memory_mb: int = Field(1024, ge=256, description="Memory limit of the smoke test")
    smoke_cpu_s: int = Field(20, ge=1, description="CPU-time limit of the smoke test (s)")
    seed_demo: bool = Field(True, description="Seed the demo catalog on start")
    key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a worker trusts a cached API key (revocation delay)"
    )
    inline_infer_us: int = Field(
        200, ge=0,
        description="Models measured faster than this (µs, batch 1) run on the event loop; "
        "0 runs every model on the thread pool",
    )
    model_memory_mb: int = Field(
        0, ge=0, description="Memory the local backend's loaded models (and the versions "
        "loaded in Triton) may take per process (MB, estimated as model file size x 2, plus "
        "a python-backend stub per Triton instance); beyond it the least recently used are "
        "unloaded and reload on their next call. 0: half of this machine's memory",
    )
    ray_idle_s: float = Field(
        600, ge=0, description="With ray: a fixed-size listing version no gateway called for "
        "this long (s) is scaled to zero replicas; its next call starts them again (waiting "
        "at most model_load_wait_s). 0: never",
    )
    model_load_wait_s: float = Field(
        30, gt=0, le=600, description="How long a call to an unloaded model waits for its "
        "load before 503 backend_unavailable with Retry-After (never charged)",
    )
    rate_limit_rps: float = Field(
        100, ge=MIN_RPS, description="Default calls/s per API key (its owner may change it)"
    )
    rate_limit_burst: int = Field(200, ge=1, description="Default burst per API key")
    max_rate_limit_rps: float = Field(
        10_000, ge=MIN_RPS, description="Highest rate a key owner may set on a key"
    )
    hold_timeout_s: float = Field(
        120, gt=0, description="Refund reservations older than this (s)"
    )
    meter_leases: bool = Field(
        True, description="Decide paid calls from per-process leases of credit and rate "
        "(one Redis round trip shared by many calls); off: two scripts per call"
    )
    run_flusher: bool = Field(
        True, description="Run the ledger flusher inside the app (else: aimarket ledger flush)"
    )
    flusher_process: bool = Field(
        True, description="Run the in-app flusher as a child process (else a thread)"
    )
    flush_claim_idle_ms: int = Field(
        30_000, ge=100, description="Reclaim events a dead flusher left pending after this (ms)"
    )
    flush_interval_ms: int = Field(250, ge=10, description="Ledger flusher's longest wait")
    flush_gather_ms: int = Field(
        100, ge=0, le=10_000, description="Ledger flusher's cycle under light traffic: events "
        "gather this long into one ledger transaction (0: flush as soon as any arrive)"
    )
    stripe_api_key: SecretStr | None = Field(
        None, description="Stripe secret key: turns on Stripe mode (else ledger-only billing)"
    )
    stripe_api_base: str = Field("https://api.stripe.com", description="Stripe API address")
    stripe_webhook_secret: SecretStr | None = Field(
        None, description="Signing secret of the webhook endpoint (whsec_...)"
    )
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where buyers reach this server (Checkout returns)"
    )
    postpaid_credit_line: str = Field(
        "50.00", description="USD a postpaid buyer may owe before usage is reported to Stripe"
    )
    billing_sync_interval_s: float = Field(
        300, ge=0, description="Push usage to Stripe this often in Stripe mode (0: only by CLI)"
    )
    alerts_interval_s: float = Field(
        15, ge=0, description="Evaluate usage alerts and send their webhooks this often (0: off)"
    )
    alert_max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts of one alert webhook before it is marked failed"
    )
    alert_retry_base_s: float = Field(
        30, gt=0, description="First retry wait of an alert webhook; doubles each attempt"
    )
    demo_calls_per_day: int = Field(
        20, ge=0, description="Free demo calls per anonymous visitor (client address) and UTC day"
    )
    demo_concurrency: int = Field(
        4, ge=1, description="Demo calls of one listing in flight at once, across workers"
    )
    unmetered_route: bool = Field(
        False, description="Expose /internal/unmetered/... without auth or billing (benchmarks)"
    )
    # -- hardening (docs/security.md) -----------------------------------------------------
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses/CIDRs of reverse proxies whose "
        "X-Forwarded-For names the client (default none: the TCP peer is the client)"
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token /metrics requires; unset: /metrics answers only "
        "loopback peers"
    )
    login_failures_per_minute: float = Field(
        2, ge=MIN_RPS, description="Failed logins per minute of one address for one e-mail, "
        "after the burst (then 429 with Retry-After)"
    )
    login_failures_burst: int = Field(
        10, ge=1, description="Failed logins one address may make for one e-mail at once"
    )
    login_address_failures_per_minute: float = Field(
        10, ge=MIN_RPS, description="Failed logins per minute of one address, any e-mail"
    )
    login_address_failures_burst: int = Field(
        50, ge=1, description="Failed logins one address may make at once, any e-mail"
    )
    signups_per_hour: float = Field(
        10, ge=MIN_RPS * 3600, description="Sign-ups per hour of one address, after the burst"
    )
    signup_burst: int = Field(5, ge=1, description="Sign-ups one address may make at once")
    demo_calls_per_minute: float = Field(
        20, ge=MIN_RPS * 60, description="Demo calls per minute of one address (signed in or "
        "not), after the burst"
    )
    demo_burst: int = Field(10, ge=1, description="Demo calls one address may make at once")
    demo_upload_files: int = Field(
        2, ge=0, description="Files one request may upload to a demo (/try/.../upload)"
    )
    demo_upload_mb_per_day: int = Field(
        20, ge=0, description="MB one address may upload to the demos per UTC day"
    )
    demo_upload_dir_mb: int = Field(
        256, ge=1, description="Size cap of the demos' upload folder (data_dir/gradio); the "
        "oldest files are removed past it"
    )

    @field_validator("stripe_api_key", "stripe_webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"AIMARKET_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes (anyone can "
                "guess a short one and forge tokens); unset it to have one generated, or use "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return value

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("AIMARKET_REDIS_CLUSTER needs AIMARKET_REDIS_URL: a node of the "
                             "cluster, e.g. redis://10.0.0.5:7000 (the embedded Valkey is one "
                             "server, not a cluster)")
        return self

    @field_validator("postpaid_credit_line")
    @classmethod
    def _usd(cls, value: str) -> str:
        if to_micro(value) < 0:
            raise ValueError("must not be negative")
        return value

    def enabled_backends(self) -> list[str]:
        """AIMARKET_SERVING_BACKENDS (the default first), else the default alone."""
        named = [n.strip() for n in self.serving_backends.split(",") if n.strip()]
        unknown = set(named) - {"local", "ray", "triton"}
        if unknown:
            raise ValueError(f"AIMARKET_SERVING_BACKENDS: unknown {', '.join(sorted(unknown))}")
        return list(dict.fromkeys([self.serving_backend, *named]))

    def model_memory_bytes(self) -> int:
        """AIMARKET_MODEL_MEMORY_MB in bytes; its default is half of this machine's memory."""
        if self.model_memory_mb:
            return self.model_memory_mb << 20
        return machine_memory() // 2

    @property
    def sqlalchemy_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.data_dir / 'aimarket.db').resolve()}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    def as_env(self) -> dict[str, str]:
        """These settings as AIMARKET_* environment variables, for a child process."""
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[f"AIMARKET_{name.upper()}"] = str(value).lower() if isinstance(value, bool) \
                else str(value)
        return out

    def signing_key(self) -> str:
        """The token signing key: configured, or created once in the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        key = path.read_text().strip()
        if len(key.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"{path} holds a signing key shorter than {MIN_SECRET_BYTES} "
                             "bytes; delete it to have a long one generated")
        return key
