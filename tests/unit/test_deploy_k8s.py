"""The Kubernetes manifests (infra/k8s), checked by reading them: kubectl does not run here.
The helpers and constants are tests/unit/test_deploy_files.py's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kombu.transport.redis import PRIORITY_STEPS, Channel

from jobs.broker import celery_config
from jobs.queues import queue_name
from jobs.secrets import is_placeholder, url_password
from jobs.settings import Settings
from tests.unit.test_deploy_files import (
    K8S,
    K8S_DOCS,
    K8S_FILES,
    PRODUCTION_GROUPS,
    PRODUCTION_KINDS,
    SECRET_TEMPLATE,
    config_map_value,
    k8s,
    k8s_containers,
    k8s_named,
    kinds_of,
    mlq_containers,
    parse_mlq,
    pod_spec,
    secret_template,
    worker_deployments,
)  # fmt: skip

# --- Kubernetes --------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in K8S_FILES} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert set(kustomization["resources"]) == expected  # an apply never overwrites the real secret
    assert kustomization["namespace"] == "mlq"
    assert all(doc["metadata"].get("namespace", "mlq") == "mlq" for _, doc in K8S_DOCS if doc["kind"] != "Namespace")
    generated = {g["name"] for g in kustomization.get("configMapGenerator", [])}
    configmaps = {doc["metadata"]["name"] for doc in k8s("ConfigMap")} | generated
    for where, container, doc in k8s_containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps, where
        for volume in (pod_spec(doc) or {}).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where


@pytest.mark.parametrize("where", sorted(mlq_containers()))
def test_every_k8s_mlq_command_parses_with_the_real_cli(where: str) -> None:
    container, _ = mlq_containers()[where]
    ctx = parse_mlq(container["command"] + container.get("args", []), where)
    kinds = ctx.params.get("kinds")
    if kinds:
        assert set(kinds.split(",")) <= PRODUCTION_KINDS


def test_k8s_mlq_containers_read_the_models_file_they_are_told() -> None:
    models = Path(config_map_value("MLQ_MODELS"))
    for where, (container, _) in mlq_containers().items():
        if container["command"][1] in ("api", "worker", "reconcile", "models"):
            mounts = {Path(m["mountPath"]) for m in container.get("volumeMounts", [])}
            assert models.parent in mounts, f"{where}: MLQ_MODELS={models} is not mounted"


def test_k8s_workers_have_a_gpu_each() -> None:
    assert worker_deployments()
    for name, container in worker_deployments().items():
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1", name
        command = container["command"]
        assert command[command.index("--gpu") + 1] == "0", name  # the pod's one GPU is index 0


def test_k8s_workers_are_the_production_groups() -> None:
    groups = {frozenset(kinds_of(c["command"])) for c in worker_deployments().values()}
    assert groups == PRODUCTION_GROUPS
    assert set().union(*groups) == PRODUCTION_KINDS


def redis_lists(kind: str) -> set[str]:
    """The Redis lists Celery keeps for a kind's queue: one per kombu priority step."""
    options = celery_config(Settings(redis_url="redis://localhost:6379/0"))["broker_transport_options"]
    sep, steps = options.get("sep", Channel.sep), options.get("priority_steps", PRIORITY_STEPS)
    return {f"{queue_name(kind)}{sep}{step}" if step else queue_name(kind) for step in steps}


def test_every_worker_deployment_scales_on_its_own_queues() -> None:
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in k8s("ScaledObject")}
    assert set(scaled) == set(worker_deployments())
    for name, container in worker_deployments().items():
        spec = scaled[name]["spec"]
        assert {t["type"] for t in spec["triggers"]} == {"redis"}, name
        lists = [t["metadata"]["listName"] for t in spec["triggers"]]
        assert len(lists) == len(set(lists)), name
        expected = set().union(*(redis_lists(kind) for kind in kinds_of(container["command"])))
        assert set(lists) == expected, name  # every kind's `mlq.<kind>` and its priority lists
        assert {queue_name(kind) for kind in kinds_of(container["command"])} <= set(lists)
        for trigger in spec["triggers"]:
            assert int(trigger["metadata"]["listLength"]) > 0
            assert trigger["authenticationRef"]["name"] == "mlq-redis"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] and spec["cooldownPeriod"] > 0


def test_keda_reads_redis_credentials_from_the_secret() -> None:
    auth = k8s_named("TriggerAuthentication", "mlq-redis")["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in auth} >= {"address", "password"}
    for ref in auth:
        assert ref["name"] == "mlq-secrets" and ref["key"] in secret_template()
    assert ".svc" in secret_template()["redis-address"]  # KEDA runs in its own namespace


def test_k8s_redis_keeps_what_it_is_given_and_asks_for_a_password() -> None:
    (redis,) = [c for _, c, doc in k8s_containers() if doc["kind"] == "StatefulSet" and "redis" in c["image"]]
    argv = [str(a) for a in redis.get("command", []) + redis.get("args", [])]
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    password = argv[argv.index("--requirepass") + 1]
    reference = re.fullmatch(r"\$\((\w+)\)", password)  # $(VAR): the kubelet puts the env value there
    assert reference, f"--requirepass {password} is written in the manifest"
    variable = reference.group(1)
    (env,) = [e for e in redis["env"] if e["name"] == variable]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "mlq-secrets", "key": "redis-password"}


def test_k8s_secrets_come_from_the_secret_and_the_template_holds_only_placeholders() -> None:
    template = secret_template()
    for where, container, _ in k8s_containers():
        for env in container.get("env", []):
            if re.search(r"PASSWORD|SECRET|BASIC_AUTH|TOKEN|DATABASE_URL|REDIS_URL", env["name"]):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "mlq-secrets" and ref["key"] in template, where
    for data in (doc.get("data", {}) for doc in k8s("ConfigMap")):
        assert not any(re.search(r"://[^/@\s]*:[^@\s]+@", str(v)) for v in data.values())
    # a forgotten placeholder fails loudly: mlq refuses to start with it
    assert is_placeholder(url_password(template["database-url"]))
    assert is_placeholder(url_password(template["redis-url"]))
    assert (
        is_placeholder(template["redis-password"]) and url_password(template["redis-url"]) == template["redis-password"]
    )
    assert is_placeholder(template["flower-basic-auth"].partition(":")[2])
    assert not k8s("Secret")  # no secret among the applied manifests


def test_k8s_flower_is_authenticated_and_the_reconciler_alone() -> None:
    (flower,) = [c for c, _ in mlq_containers().values() if c["command"][1] == "flower"]
    assert "MLQ_FLOWER_BASIC_AUTH" in {e["name"] for e in flower["env"]}
    (reconciler,) = [doc for c, doc in mlq_containers().values() if c["command"][1] == "reconcile"]
    assert reconciler["kind"] == "Deployment" and reconciler["spec"]["replicas"] == 1


def test_k8s_pods_are_annotated_for_prometheus() -> None:
    ports = {
        "worker": config_map_value("MLQ_WORKER_METRICS_PORT"),
        "reconcile": config_map_value("MLQ_RECONCILER_METRICS_PORT"),
    }
    for where, (container, doc) in mlq_containers().items():
        command = container["command"][1]
        if command == "api":
            ports["api"] = str(parse_mlq(container["command"], where).params["port"])
        if command in ports:
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", where
            assert annotations["prometheus.io/port"] == ports[command], where
            assert annotations["prometheus.io/path"] == "/metrics", where
