"""The Helm chart (helm/aimarket), rendered offline with the Helm v4 engine that helm-python-sdk
embeds (no helm binary, no cluster): lint, Kubernetes schemas, the operators' CRD schemas, and
the invariants that keep the chart from drifting away from the app (Settings, metrics, Ray)."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from storefront.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aimarket"
PRODUCTION = CHART / "ci" / "production-values.yaml"
CRDS = ROOT.parent / "shared" / "crds"  # beside the checkout (see shared/crds/README.md)
KUBE_VERSION = "1.35.0"  # a current Kubernetes release (kubernetes-validate knows up to 1.37)
NAMESPACE = "market"
CRD_FILES = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
# Settings the chart sets that other work is adding to storefront/config.py right now: the
# Triton backend (issue 13) and the metrics token (issue 16). As soon as Settings has one,
# it is checked like every other name; until then it may only be one of these.
PENDING_SETTINGS: set[str] = set()  # settings the chart names before the app has them
# Values keys that name objects created outside the chart (documented in values.yaml).
EXTERNAL_KEYS = {"existingSecret", "secretName", "redisPasswordSecret", "existingClaim"}


def production_values() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION.read_text())


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="aimarket", namespace=NAMESPACE,
                                        is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = path
                docs.append(doc)
    return docs


RENDERS = {"default": None, "production": "production"}


@pytest.fixture(scope="module", params=list(RENDERS))
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = production_values() if request.param == "production" else {}
    return request.param, values, render(values or None)


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's defaults with ``values`` over them (as Helm merges them)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for k, v in over.items():
                out[k] = merge(base[k], v) if k in base else v
            return out
        return over
    return merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_template"}


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(where, pod spec, long-running) of every pod a manifest makes."""
    kind, spec = doc["kind"], doc.get("spec", {})
    name = f"{kind}/{doc['metadata']['name']}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        yield name, spec["template"]["spec"], True
    elif kind == "Job":
        yield name, spec["template"]["spec"], False
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"], False
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
        yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"], True
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name} {group['groupName']}", group["template"]["spec"], True


def pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet"):
        yield spec["template"]
    elif kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
        yield cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["template"]


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} in the render"
    return found[0]


# -- Helm itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("which", list(RENDERS))
def test_lint_strict(which: str) -> None:
    values = production_values() if which == "production" else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}",
                       namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not problems, json.dumps(report, indent=2)


def test_values_schema_accepts_and_refuses() -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema(merged_values({}))
    chart.validate_schema(merged_values(production_values()))
    bad = [
        {"settings": {"secret_key": "x" * 48}},           # a secret in values
        {"settings": {"stripe_api_key": "sk_live_x"}},
        {"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0}},
        {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
        {"gateway": {"resources": {"limits": None}}},      # no limits (null removes a key)
        {"ray": {"upgradeStrategy": "Sometimes"}},
        {"gatway": {"replicas": 3}},                      # a typo is not silently ignored
    ]
    for over in bad:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merged_values(over))


def test_settings_the_chart_sets_cannot_be_overridden_in_values() -> None:
    with pytest.raises(helm.HelmError, match="set by the chart itself"):
        render({"settings": {"run_flusher": True}})


def test_no_secret_is_rendered_from_values(case: Any) -> None:
    _, _, docs = case
    assert not [d for d in docs if d["kind"] == "Secret"]
    settings = one(docs, "ConfigMap", "aimarket-settings")["data"]
    for name in ("SECRET_KEY", "DATABASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET",
                 "ADMIN_PASSWORD", "METRICS_TOKEN"):
        assert f"AIMARKET_{name}" not in settings


# -- schemas ---------------------------------------------------------------------------------

CORE_KINDS_DEFAULT = {"ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim",
                      "Service", "ServiceAccount", "StatefulSet"}
CORE_KINDS_PRODUCTION = {"ConfigMap", "CronJob", "Deployment", "HorizontalPodAutoscaler",
                         "Ingress", "NetworkPolicy", "PersistentVolumeClaim", "Service",
                         "ServiceAccount"}


def test_core_manifests_match_the_kubernetes_schemas(case: Any) -> None:
    which, _, docs = case
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_FILES]
    for doc in core:
        kubernetes_validate.validate(strip(doc), KUBE_VERSION, strict=True)
    # The pod templates inside the RayService are core PodSpecs too: validate them as Pods.
    pods = 0
    for doc in docs:
        if doc["kind"] == "RayService":
            for template in pod_templates(doc):
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "ray", **template.get("metadata", {})},
                       "spec": template["spec"]}
                kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
                pods += 1
    expected = CORE_KINDS_PRODUCTION if which == "production" else CORE_KINDS_DEFAULT
    assert {d["kind"] for d in core} == expected
    assert pods == 2
    print(f"{which}: {len(core)} core manifests and {pods} Ray pod templates valid "
          f"against Kubernetes {KUBE_VERSION}")


def closed(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (as the API server's strict field
    validation does), except where it preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is absent (CI lays shared/ beside the checkout): no CRD schemas")
    crd = yaml.safe_load((CRDS / CRD_FILES[(api_version, kind)]).read_text())
    version = api_version.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v["served"], f"{kind} {api_version} is not served"
            return closed(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind}: no {api_version} in {CRD_FILES[(api_version, kind)]}")


def test_custom_resources_match_their_crd_schemas(case: Any) -> None:
    which, _, docs = case
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_FILES]
    for doc in custom:
        schema = crd_schema(doc["apiVersion"], doc["kind"])
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(strip(doc)),
                        key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{doc['kind']} {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    kinds = sorted(d["kind"] for d in custom)
    assert kinds == (["RayService", "ServiceMonitor"] if which == "production"
                     else ["RayService"])


def test_the_crd_check_would_catch_a_mistake() -> None:
    docs = render(production_values())
    ray = strip(one(docs, "RayService"))
    broken = copy.deepcopy(ray)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1  # typo
    del broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    errors = list(jsonschema.Draft7Validator(
        crd_schema("ray.io/v1", "RayService")).iter_errors(broken))
    assert len(errors) == 2


# -- invariants ------------------------------------------------------------------------------

def externals(values: dict[str, Any]) -> set[str]:
    """Names of objects the values say live outside the chart."""
    return {v for k, v in walk(merged_values(values)) if k in EXTERNAL_KEYS and v}


def test_every_reference_exists_or_is_documented_external(case: Any) -> None:
    which, values, docs = case
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    outside = externals(values)
    refs: list[tuple[str, str]] = []
    for doc in docs:
        for key, node in walk(doc):
            if key in ("secretKeyRef", "secretRef"):
                refs.append(("Secret", node["name"]))
            elif key == "configMapRef" or key == "configMapKeyRef":
                refs.append(("ConfigMap", node["name"]))
            elif key == "secret" and isinstance(node, dict) and "secretName" in node:
                refs.append(("Secret", node["secretName"]))
            elif key == "configMap" and isinstance(node, dict) and "name" in node:
                refs.append(("ConfigMap", node["name"]))
            elif key == "serviceAccountName":
                refs.append(("ServiceAccount", node))
            elif key == "persistentVolumeClaim":
                refs.append(("PersistentVolumeClaim", node["claimName"]))
            elif key == "imagePullSecrets":
                refs.extend(("Secret", s["name"]) for s in node)
        if doc["kind"] == "Ingress":
            refs.extend(("Secret", t["secretName"]) for t in doc["spec"].get("tls", []))
        if doc["kind"] == "ServiceMonitor":
            for ep in doc["spec"]["endpoints"]:
                if "authorization" in ep:
                    refs.append(("Secret", ep["authorization"]["credentials"]["name"]))
    assert refs
    missing = [r for r in refs if r not in have and r[1] not in outside]
    assert not missing, f"{which}: referenced, neither rendered nor external: {missing}"
    external = sorted({r for r in refs if r not in have})
    assert all(kind in ("Secret", "PersistentVolumeClaim") for kind, _ in external), external
    if which == "production":
        assert {n for _, n in external} == {"aimarket-prod", "aimarket-postgres",
                                            "aimarket-redis", "market-example-com-tls",
                                            "ray-gcs-redis"}


def test_services_hpa_and_ingress_point_at_real_targets(case: Any) -> None:
    _, _, docs = case
    templates = [t for d in docs for t in pod_templates(d)]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matching = [t for t in templates
                    if selector.items() <= t["metadata"].get("labels", {}).items()]
        assert matching, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            names = {p.get("name") for t in matching for c in t["spec"]["containers"]
                     for p in c.get("ports", [])}
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for ing in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = one(docs, hpa["spec"]["scaleTargetRef"]["kind"],
                     hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        selected = [s for s in services.values() if sm["spec"]["selector"]["matchLabels"].items()
                    <= s["metadata"]["labels"].items()]
        assert [s["metadata"]["name"] for s in selected] == ["aimarket-gateway"]
        assert sm["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in selected[0]["spec"]["ports"]}


def test_every_container_is_bounded_probed_and_not_root(case: Any) -> None:
    which, _, docs = case
    seen = 0
    for doc in docs:
        for where, spec, long_running in pod_specs(doc):
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
            assert spec.get("automountServiceAccountToken") is False, where
            pod_sc = spec.get("securityContext", {})
            for c in spec.get("initContainers", []) + spec["containers"]:
                name = f"{where} {c['name']}"
                seen += 1
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), \
                        f"{name}: resources.{part}"
                sc = {**pod_sc, **c.get("securityContext", {})}
                assert sc.get("runAsNonRoot") is True, f"{name} may run as root"
                assert sc.get("runAsUser", 0) != 0, f"{name}: runAsUser 0"
                assert sc.get("allowPrivilegeEscalation") is False, name
                assert sc.get("readOnlyRootFilesystem") is True, name
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
                assert not sc.get("privileged"), name
                # Kubernetes allows no probes on init containers; a Job's container ends.
                if long_running and c in spec["containers"]:
                    assert "livenessProbe" in c and "readinessProbe" in c, f"{name}: probes"
    ray = one(docs, "RayService")["spec"]["rayClusterConfig"]
    if ray.get("enableInTreeAutoscaling"):  # the sidecar KubeRay adds to the head
        auto = ray["autoscalerOptions"]
        assert {"cpu", "memory"} <= set(auto["resources"]["limits"])
        assert auto["securityContext"]["readOnlyRootFilesystem"] is True
    assert seen == (9 if which == "production" else 6)


def test_the_gateways_probe_healthz_and_hand_the_flusher_off(case: Any) -> None:
    _, _, docs = case
    gateway = one(docs, "Deployment", "aimarket-gateway")["spec"]["template"]["spec"]
    c = gateway["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "aimarket up" in " ".join(c["args"])
    assert "--workers 1" in " ".join(c["args"])  # one process per pod unless values say
    settings = one(docs, "ConfigMap", "aimarket-settings")["data"]
    assert settings["AIMARKET_RUN_FLUSHER"] == "false"   # the flusher Deployment runs it
    assert settings["AIMARKET_BILLING_SYNC_INTERVAL_S"] == "0"  # the billing sender does
    flusher = one(docs, "Deployment", "aimarket-flusher")["spec"]["template"]["spec"]
    assert flusher["containers"][0]["args"] == ["ledger", "flush"]


def test_the_gateway_runs_as_many_workers_as_values_say() -> None:
    values = production_values()
    values.setdefault("gateway", {})["workers"] = 3
    gateway = one(render(values), "Deployment", "aimarket-gateway")["spec"]["template"]["spec"]
    args = " ".join(gateway["containers"][0]["args"])
    assert args.endswith("aimarket up --host 0.0.0.0 --port 8000 --workers 3")
    with pytest.raises(Exception, match="workers"):
        render({"gateway": {"workers": 0}})  # the schema refuses it


def test_stripe_mode_runs_one_billing_sender_and_monthly_payouts() -> None:
    docs = render(production_values())
    sender = one(docs, "Deployment", "aimarket-billing")["spec"]
    assert sender["replicas"] == 1 and sender["strategy"]["type"] == "Recreate"
    assert sender["template"]["spec"]["containers"][0]["args"] == [
        "billing", "sync", "--every", "300"]
    payouts = one(docs, "CronJob", "aimarket-payouts")["spec"]
    assert payouts["concurrencyPolicy"] == "Forbid"
    job = payouts["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["billing", "payouts"]
    # The CLI verbs the chart runs exist.
    from typer.testing import CliRunner

    from storefront.cli import app
    runner = CliRunner()
    for args in (["ledger", "flush"], ["billing", "sync", "--every", "300"],
                 ["billing", "payouts"],
                 ["up", "--host", "0.0.0.0", "--port", "8000", "--workers", "3"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
    assert "--every" in runner.invoke(app, ["billing", "sync", "--help"]).output


def settings_names() -> set[str]:
    return set(Settings.model_fields)


def test_every_aimarket_env_name_is_a_real_setting(case: Any, monkeypatch: Any) -> None:
    which, _, docs = case
    known = settings_names()
    names: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-settings"):
            names.update(doc["data"])
        for key, node in walk(doc):
            if key == "env" and isinstance(node, list):
                names.update({e["name"]: "" for e in node if e["name"].startswith("AIMARKET_")})
    assert names
    unknown = {n for n in names if n.removeprefix("AIMARKET_").lower() not in known
               and n.removeprefix("AIMARKET_").lower() not in PENDING_SETTINGS}
    assert not unknown, f"not Settings fields (storefront/config.py): {sorted(unknown)}"
    # The ConfigMap's values are valid Settings (types, ranges), read as the app reads them.
    config = one(docs, "ConfigMap", "aimarket-settings")["data"]
    for var in [v for v in os.environ if v.startswith("AIMARKET_")]:
        monkeypatch.delenv(var)
    for k, v in config.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIMARKET_SECRET_KEY", "k" * 48)
    s = Settings()
    assert s.serving_backend == "ray" and not s.run_flusher and s.seed_demo is False
    assert str(s.data_dir) == "/data"
    if which == "production":
        assert {"AIMARKET_TRITON_URL", "AIMARKET_TRITON_MODEL_REPOSITORY"} <= set(config)
        assert config["AIMARKET_TRITON_REPOSITORY_FORMAT"] == "onnxruntime"
        assert "AIMARKET_REDIS_URL" not in config  # external: from its Secret


def test_the_ray_cluster_matches_what_the_app_runs(case: Any) -> None:
    from serving.ray_backend import SERVE_START_OPTIONS

    _, _, docs = case
    ray = one(docs, "RayService")
    cluster = ray["spec"]["rayClusterConfig"]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = re.search(r"^ray==(\S+)$", lock, re.M)
    assert pinned and cluster["rayVersion"] == pinned.group(1), "Ray on the nodes != the lock's"
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    # The static Serve options are the app's own; listing apps are deployed at run time.
    assert {k: serve[k] for k in SERVE_START_OPTIONS} == SERVE_START_OPTIONS
    assert serve["applications"] == []
    address = one(docs, "ConfigMap", "aimarket-settings")["data"]["AIMARKET_RAY_ADDRESS"]
    assert address == f"{ray['metadata']['name']}-head-svc.{NAMESPACE}.svc:6379"
    gateway = one(docs, "Deployment", "aimarket-gateway")["spec"]["template"]
    args = " ".join(gateway["spec"]["containers"][0]["args"])
    assert 'ray start --address="$AIMARKET_RAY_ADDRESS"' in args and "--num-cpus=0" in args
    # Every Ray node and gateway: the app image. The Ray nodes mount no data volume: the
    # replicas read the models from Ray's object store (a node that never saw the data dir).
    image = gateway["spec"]["containers"][0]["image"]
    for template in pod_templates(ray):
        c = template["spec"]["containers"][0]
        assert c["image"] == image
        assert "/data" not in {m["mountPath"] for m in c["volumeMounts"]}
        assert not [v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["RAY_worker_niceness"] == "0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_dockerfile_is_the_image_the_chart_expects() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") >= 2, "multi-stage"
    assert "-c requirements.lock" in dockerfile
    user = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, re.M)
    assert user, "a numeric non-root USER (runAsNonRoot can check only a number)"
    values = merged_values({})
    assert int(user.group(1)) == values["podSecurityContext"]["runAsUser"] != 0
    assert re.search(r"python:3\.11", dockerfile), "the lock is for Python 3.11 / 3.12"


def app_metric_names() -> dict[str, set[str]]:
    """Every aimarket_* family the app exposes, with the sample names Prometheus sees."""
    from prometheus_client import REGISTRY

    import billing.metrics  # noqa: F401  (registers its gauges)
    import metering.metrics  # noqa: F401

    out: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "summary": ["", "_sum", "_count"]}
    for family in REGISTRY.collect():
        if family.name.startswith("aimarket_"):
            out[family.name] = {family.name + s for s in suffixes[family.type]}
    return out


def test_the_dashboard_shows_real_metrics_and_every_one_of_them(case: Any) -> None:
    _, _, docs = case
    board = json.loads(one(docs, "ConfigMap", "aimarket-dashboard")["data"]["aimarket.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\baimarket_[a-z_]+", e)}
    families = app_metric_names()
    samples = set().union(*families.values())
    assert used and used <= samples, f"not exposed by the app: {sorted(used - samples)}"
    unshown = [f for f, names in families.items() if not names & used]
    assert not unshown, f"metrics no panel shows: {unshown}"
