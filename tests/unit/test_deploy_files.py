"""Docker, kubectl, Prometheus and Grafana do not run here: the deployment files are checked by
reading them (docker-compose.yml, infra/Dockerfile.*, infra/k8s, infra/prometheus, infra/grafana)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.cli import app

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CLI = typer.main.get_command(app)
PRODUCTION_KINDS = set(load_models_file("production").kinds)
PRODUCTION_GROUPS = {frozenset(kinds) for kinds in load_models_file("production").groups().values()}
SETTINGS_VARS = {f"MLQ_{name.upper()}" for name in Settings.model_fields} | {"MLQ_FLOWER_BASIC_AUTH"}  # `mlq flower`

K8S_FILES = sorted(K8S.glob("*.yaml"))
SECRET_TEMPLATE = "secret.example.yaml"  # not applied: kustomization.yaml leaves it out
K8S_DOCS: list[tuple[str, dict[str, Any]]] = [  # what `kubectl apply -k infra/k8s` applies
    (path.name, doc)
    for path in K8S_FILES
    if path.name not in ("kustomization.yaml", SECRET_TEMPLATE)
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]

# the metrics jobs/metrics.py exports: the dashboard may read these and nothing else
METRICS = {
    "mlq_jobs_submitted_total",
    "mlq_jobs_finished_total",
    "mlq_job_queue_wait_seconds",
    "mlq_job_run_seconds",
    "mlq_batch_size",
    "mlq_queue_depth",
    "mlq_jobs",
    "mlq_model_load_seconds",
    "mlq_worker_memory_bytes",
    "mlq_gpu_memory_bytes",
    "mlq_gpu_utilization_ratio",
    "mlq_reconciler_actions_total",
    "mlq_pruned_total",
    "mlq_last_prune_timestamp_seconds",
    "mlq_webhook_deliveries_total",
    "mlq_workers_online",
    "mlq_tenant_jobs",
    "mlq_tenant_share",
}
HISTOGRAMS = {"mlq_job_queue_wait_seconds", "mlq_job_run_seconds", "mlq_batch_size"}


# --- helpers -----------------------------------------------------------------------------------


def parse_mlq(argv: list[str], where: str) -> Any:
    """`mlq ARGV` parsed by the real CLI (raises on an unknown command, option or bad value);
    returns the subcommand's context. Typer has its own copy of click, so no isinstance(click.Group)."""
    assert argv and argv[0] == "mlq", where
    args, command = list(argv[1:]), CLI
    while hasattr(command, "list_commands"):  # a group: descend into the named subcommand
        assert args, f"{where}: `{shlex.join(argv)}` names no command"
        sub = command.get_command(command.context_class(command), args[0])
        assert sub is not None, f"{where}: `mlq {args[0]}` is not a command"
        command, args = sub, args[1:]
    ctx = command.make_context(where, args)
    assert ctx.command is command and not ctx.args, f"{where}: left over {ctx.args}"
    return ctx


def kinds_of(argv: list[str]) -> set[str]:
    return set(argv[argv.index("--kinds") + 1].split(","))


def mlq_services() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in SERVICES.items() if svc.get("command", [None])[0] == "mlq"}


def compose_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if svc.get("command", [None])[:2] == ["mlq", "worker"]}


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in K8S_DOCS if doc.get("kind") == kind]


def k8s_named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in k8s(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
        return dict(doc["spec"]["template"]["spec"])
    return None


def k8s_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file/object/container, the container, its workload) for every container in infra/k8s."""
    for file, doc in K8S_DOCS:
        spec = pod_spec(doc)
        for container in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
            yield f"{file}/{doc['metadata']['name']}/{container['name']}", container, doc


def mlq_containers() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    return {where: (c, doc) for where, c, doc in k8s_containers() if c.get("command", [None])[0] == "mlq"}


def worker_deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: c for c, doc in mlq_containers().values() if c["command"][:2] == ["mlq", "worker"]}


def config_map_value(name: str) -> str:
    return str(k8s_named("ConfigMap", "mlq-config")["data"][name])


def secret_template() -> dict[str, str]:
    docs = [doc for doc in yaml.safe_load_all((K8S / SECRET_TEMPLATE).read_text()) if doc]
    assert [doc["kind"] for doc in docs] == ["Secret"]
    return dict(docs[0]["stringData"])


# --- docker compose ----------------------------------------------------------------------------


def test_compose_has_the_agreed_services() -> None:
    names = set(SERVICES)
    assert {"redis", "postgres", "migrate", "api", "flower", "reconciler", "prometheus", "grafana"} <= names
    assert {"worker-text", "worker-generation", "worker-media"} <= names
    reconcilers = [name for name, argv in mlq_services().items() if argv[:2] == ["mlq", "reconcile"]]
    assert reconcilers == ["reconciler"]  # exactly one: the others would only stand by
    assert SERVICES["reconciler"].get("deploy", {}).get("replicas", 1) == 1


@pytest.mark.parametrize("service", sorted(mlq_services()))
def test_every_mlq_command_parses_with_the_real_cli(service: str) -> None:
    ctx = parse_mlq(mlq_services()[service], service)
    kinds = ctx.params.get("kinds")
    if kinds:  # compose defaults to the demo profile; real deployments use production
        assert set(kinds.split(",")) <= set(load_models_file("demo").kinds)
        assert set(kinds.split(",")) <= PRODUCTION_KINDS


def test_compose_workers_are_the_production_groups() -> None:
    groups = {frozenset(kinds_of(svc["command"])) for svc in compose_workers().values()}
    assert groups == PRODUCTION_GROUPS
    assert set().union(*groups) == PRODUCTION_KINDS


@pytest.mark.parametrize("path", ["docker-compose.yml", *(f"infra/k8s/{p.name}" for p in K8S_FILES)])
def test_every_mlq_variable_is_a_setting(path: str) -> None:
    used = set(re.findall(r"\b(MLQ_[A-Z_]+)\b", (ROOT / path).read_text()))
    assert used <= SETTINGS_VARS, used - SETTINGS_VARS


def test_redis_keeps_what_it_is_given_and_asks_for_a_password() -> None:
    command = shlex.split(SERVICES["redis"]["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in command


def test_workers_reserve_and_pin_a_gpu() -> None:
    for name, svc in SERVICES.items():
        if name.startswith("worker"):
            devices = svc["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
            assert "--gpu" in svc["command"]
            if len(devices) == 1 and len(devices[0]["device_ids"]) == 1:
                # the container sees only the GPU it reserved, as index 0
                assert svc["command"][svc["command"].index("--gpu") + 1] == "0", name


def test_metrics_ports_are_set_and_match_what_prometheus_scrapes() -> None:
    for name, svc in compose_workers().items():
        assert svc["environment"]["MLQ_WORKER_METRICS_PORT"] == "9101", name
        assert (name, 9101, "/metrics") in prometheus_targets()
    assert SERVICES["reconciler"]["environment"]["MLQ_RECONCILER_METRICS_PORT"] == "9102"
    assert ("reconciler", 9102, "/metrics") in prometheus_targets()
    api = parse_mlq(SERVICES["api"]["command"], "api")
    assert ("api", api.params["port"], "/metrics") in prometheus_targets()


def test_flower_binds_all_inside_but_publishes_on_loopback() -> None:
    flower = parse_mlq(SERVICES["flower"]["command"], "flower")
    assert flower.params["address"] == "0.0.0.0"
    assert all(port.startswith("127.0.0.1:") for port in SERVICES["flower"]["ports"])
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in SERVICES[name].get("ports", [])), name


def test_compose_has_no_default_password() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, form in re.findall(r"\$\{([A-Z0-9_]*(?:PASSWORD|SECRET|AUTH|TOKEN)[A-Z0-9_]*)(:?[-?=+]?)", text):
        assert form == ":?", f"${{{name}}} must be required (${{{name}:?...}}), never defaulted"
    for service, svc in SERVICES.items():
        env = svc.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            if re.search(r"PASSWORD|SECRET|BASIC_AUTH|TOKEN", key):
                assert "${" in str(value), f"{service}: {key} is written in the file"
            for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", str(value)):
                assert password.startswith("${"), f"{service}: {key} has a password in the file"
    assert SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_api_image_installs_no_torch_and_worker_image_does() -> None:
    api = (ROOT / "infra" / "Dockerfile.api").read_text()
    worker = (ROOT / "infra" / "Dockerfile.worker").read_text()
    assert re.search(r"pip install [^\n]*\.\s*$", api, re.M) and "[worker]" not in api
    assert '".[worker]"' in worker and "cuda" in worker.lower()
    for svc in ("migrate", "api", "flower", "reconciler"):
        assert SERVICES[svc]["build"]["dockerfile"] == "infra/Dockerfile.api"
    for svc in compose_workers().values():
        assert svc["build"]["dockerfile"] == "infra/Dockerfile.worker"


def test_images_own_the_folders_their_volumes_mount() -> None:
    """A named volume starts with the ownership of the image's folder; a missing one is root's."""
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        text = (INFRA / dockerfile).read_text()
        assert re.search(r"mkdir -p [^\n]*/data/artifacts", text) and "/data/models" in text, dockerfile
        assert "chown -R mlq /data" in text, dockerfile


# --- Prometheus and Grafana --------------------------------------------------------------------


def prometheus_targets() -> set[tuple[str, int, str]]:
    """(host, port, path) of every scrape target in infra/prometheus/prometheus.yml."""
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port), path))
        for dns in job.get("dns_sd_configs", []):
            targets.update((host, int(dns["port"]), path) for host in dns["names"])
    return targets


def test_prometheus_scrapes_compose_services_only() -> None:
    hosts = {host for host, _, _ in prometheus_targets()}
    assert hosts <= set(SERVICES), hosts - set(SERVICES)
    assert {"api", "reconciler", *compose_workers()} <= hosts
    mount = "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in SERVICES["prometheus"]["volumes"]
    assert SERVICES["prometheus"]["image"].startswith("prom/prometheus")


DASHBOARD = json.loads((INFRA / "grafana" / "dashboards" / "mlq.json").read_text())


def dashboard_queries() -> list[str]:
    panels = [p for row in DASHBOARD["panels"] for p in [row, *row.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    variables = [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"] for v in DASHBOARD["templating"]["list"]
    ]
    return exprs + variables


def test_dashboard_reads_exactly_the_exported_metrics() -> None:
    assert DASHBOARD["schemaVersion"] >= 36 and DASHBOARD["uid"] and DASHBOARD["panels"]
    used = set()
    for query in dashboard_queries():
        for name in re.findall(r"\bmlq_[a-z0-9_]+", query):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in HISTOGRAMS else name)
    assert used <= METRICS, used - METRICS
    assert used == METRICS, f"no panel shows {METRICS - used}"
    for query in dashboard_queries():
        if "histogram_quantile" in query:
            assert re.search(r"by \([^)]*\ble\b", query), query  # quantiles need the buckets kept


def test_the_metrics_the_dashboard_reads_are_the_ones_mlq_defines() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from jobs import metrics

    defined = {
        m._name + ("_total" if m._type == "counter" else "")
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    for package in ("jobs", "producer", "workers"):  # collectors read at scrape time
        for source in (ROOT / package).rglob("*.py"):
            defined |= set(re.findall(r"MetricFamily\(\s*\"(mlq_\w+)\"", source.read_text()))
    assert defined == METRICS


def test_dashboard_panels_are_well_formed() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "mlq-prometheus" and target["refId"]


def test_grafana_is_provisioned_from_infra() -> None:
    provisioning = INFRA / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["uid"]) for d in datasources] == [("prometheus", "mlq-prometheus")]
    assert datasources[0]["url"].startswith("http://prometheus:")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mlq.yml").read_text())["providers"]
    volumes = SERVICES["grafana"]["volumes"]
    assert f"./infra/grafana/dashboards:{provider['options']['path']}:ro" in volumes
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
