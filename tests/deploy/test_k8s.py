"""deploy/k8s: the overlays render, every object validates offline, and what the
manifests set agrees with the services, the compose stack and the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import topics
from tests.deploy import kustomize_lite
from tests.deploy.support import (
    CONSUMES,
    DASHBOARDS,
    DEPLOY,
    K8S,
    OVERLAYS,
    ROOT,
    RULES,
    SERVICES,
    compose,
    known_env,
    load_settings,
    required_env,
)

pytestmark = pytest.mark.unit

# The oldest and the newest Kubernetes minor version the manifests must be valid for.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = yaml.safe_load((Path(__file__).parent / "schemas" / "crds.yaml").read_text())[
    "schemas"
]


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize_lite.build(K8S / "overlays" / overlay))


def objs(overlay: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if kind is None or o["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (o,) = [o for o in objs(overlay, kind) if o["metadata"]["name"] == name]
    return o


def key(o: dict[str, Any]) -> tuple[str, str, str, str]:
    return (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def namespace_of(overlay: str) -> str:
    return str(
        yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["namespace"]
    )


# ---------------------------------------------------------------- rendering and schemas
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    rendered = render(overlay)
    assert len({key(o) for o in rendered}) == len(rendered)
    ns = namespace_of(overlay)
    for o in rendered:
        if o["kind"] not in kustomize_lite.CLUSTER_SCOPED:
            assert o["metadata"]["namespace"] == ns, key(o)


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_kubectl_kustomize_renders_the_same(path: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = {key(o): o for o in yaml.safe_load_all(out.stdout) if o}
    mine = {key(o): o for o in kustomize_lite.build(K8S / path)}
    assert set(mine) == set(theirs)
    for k, o in mine.items():
        assert o == theirs[k], k


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_offline(overlay: str, version: str) -> None:
    errors = []
    for o in render(overlay):
        crd = CRD_SCHEMAS.get(f"{o['apiVersion']} {o['kind']}")
        try:
            if crd is not None:
                jsonschema.validate(o, crd)
            else:
                kubernetes_validate.validate(o, version, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            errors.append(f"{key(o)}: {e.message}")
    assert not errors, "\n".join(errors)


def test_the_validators_have_teeth() -> None:
    dep = json.loads(json.dumps(one("prod", "Deployment", "ctrain-ingest")))
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)
    topic = json.loads(json.dumps(objs("prod", "KafkaTopic")[0]))
    topic["spec"]["partition"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(topic, CRD_SCHEMAS["kafka.strimzi.io/v1beta2 KafkaTopic"])


def test_every_kind_has_a_schema() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for ov in OVERLAYS for o in render(ov)}
    for api, kind in kinds:
        if f"{api} {kind}" not in CRD_SCHEMAS:
            assert "." not in api.split("/")[0] or api.split("/")[0].endswith("k8s.io"), (api, kind)


def test_generated_monitoring_files_are_current() -> None:
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "tools" / "sync_k8s.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rule = yaml.safe_load((K8S / "base" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    cm = yaml.safe_load((K8S / "base" / "monitoring" / "grafana-dashboards.yaml").read_text())
    assert {f"ctrain-{p.name}" for p in DASHBOARDS.glob("*.json")} == set(cm["data"])
    assert len(json.dumps(cm)) < 900_000  # a ConfigMap holds at most 1 MiB


# ---------------------------------------------------------------- the services
def container(overlay: str, name: str) -> dict[str, Any]:
    dep = one(overlay, "Deployment", f"ctrain-{name}")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def container_env(overlay: str, name: str) -> dict[str, str]:
    c = container(overlay, name)
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        cm = one(overlay, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["name"] == "CTRAIN_INSTANCE":
            # The lease holder: the pod's own name, unique among the replicas.
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e
            env[e["name"]] = f"ctrain-{name}-0"
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", e
            env[e["name"]] = namespace_of(overlay)
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", ["trigger", "promoter", "monitor"])
def test_control_services_run_two_replicas_rolled_one_new_pod_first(
    overlay: str, name: str
) -> None:
    """Two replicas, one leading per model (docs/deploy.md, "Two replicas"); a rollout
    starts a new pod before it stops an old one, so a leader is always alive."""
    dep = one(overlay, "Deployment", f"ctrain-{name}")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    env = container_env(overlay, name)
    assert env["CTRAIN_INSTANCE"] == f"ctrain-{name}-0" and env["CTRAIN_LEASE_TTL_S"] == "10"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_env_is_known_complete_and_loads(overlay: str, name: str) -> None:
    env = container_env(overlay, name)
    assert {k for k in env if not k.startswith("CTRAIN_")} == set()
    assert set(env) - known_env(name) == set(), "not a setting of this service"
    assert required_env(name) - set(env) == set(), "required settings missing"
    assert env[f"CTRAIN_{name.upper()}_HTTP_HOST"] == "0.0.0.0"
    common, own = load_settings(name, env)
    assert own.http_port == SERVICES[name]
    kafka = one(overlay, "Kafka", "ctrain")
    assert common.kafka_bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:9092"
    pool = one(overlay, "KafkaNodePool", "dual-role")
    assert common.kafka_replication <= pool["spec"]["replicas"]
    if name == "trigger":
        assert own.backend == "kfp"
        assert own.kfp_host == "http://ml-pipeline.kubeflow:8888"
        assert own.base_image == container(overlay, "trigger")["image"]
    if name == "promoter":
        mounts = {m["name"]: m["mountPath"] for m in container(overlay, name)["volumeMounts"]}
        assert own.tokens_file.startswith(mounts["tokens"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_image_ports_probes_resources(overlay: str, name: str) -> None:
    c = container(overlay, name)
    port = SERVICES[name]
    assert c["image"].rsplit("/", 1)[-1].split(":")[0] == f"ctrain-{name}"  # Dockerfile target
    assert "command" not in c and "args" not in c, "the image's entrypoint runs the service"
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # An outage of Redis, the broker or serving makes a service unready, not dead.
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert set(c["resources"]) == {"requests", "limits"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    svc = one(overlay, "Service", f"ctrain-{name}")
    assert svc["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    pod = one(overlay, "Deployment", f"ctrain-{name}")["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    if overlay == "prod":
        assert not c["image"].endswith(":latest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_pdb_and_consumers_an_hpa(overlay: str) -> None:
    pdbs = {
        json.dumps(p["spec"]["selector"]["matchLabels"], sort_keys=True)
        for p in objs(overlay, "PodDisruptionBudget")
    }
    for w in objs(overlay, "Deployment") + objs(overlay, "StatefulSet"):
        if w["metadata"]["name"] == "ctrain-redis":
            continue  # one replica of state: a PDB would only block node drains
        assert json.dumps(w["spec"]["selector"]["matchLabels"], sort_keys=True) in pdbs, w
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in objs(overlay, "HorizontalPodAutoscaler")
    }
    assert set(hpas) == {f"ctrain-{n}" for n in CONSUMES}
    partitions = {
        t["spec"]["topicName"]: t["spec"]["partitions"] for t in objs(overlay, "KafkaTopic")
    }
    for n, topic in CONSUMES.items():
        spec = hpas[f"ctrain-{n}"]["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert spec["minReplicas"] <= spec["maxReplicas"] <= partitions[topic], n
        assert one(overlay, "Deployment", f"ctrain-{n}")["spec"]["replicas"] >= spec["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_match_the_contract_and_compose(overlay: str) -> None:
    ts = {t["spec"]["topicName"]: t for t in objs(overlay, "KafkaTopic")}
    assert tuple(ts) == topics.ALL
    init = compose()["services"]["kafka-init"]["environment"]["TOPICS"].split()
    retention = {k: int(v) for k, v in (s.split("=") for s in init)}
    brokers = one(overlay, "KafkaNodePool", "dual-role")["spec"]["replicas"]
    cm = one(overlay, "ConfigMap", "ctrain-common")["data"]
    for name, t in ts.items():
        spec = t["spec"]
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "ctrain"
        assert spec["config"]["retention.ms"] == retention[name], name
        assert spec["replicas"] <= brokers
        assert (
            spec["partitions"] >= int(cm["CTRAIN_KAFKA_PARTITIONS"])
            or name not in CONSUMES.values()
        )
        if spec["replicas"] > 1:
            assert 1 < spec["config"]["min.insync.replicas"] < spec["replicas"] + 1
    ann = one(overlay, "Kafka", "ctrain")["metadata"]["annotations"]
    assert ann == {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_promoter_api_is_open_to_other_namespaces(overlay: str) -> None:
    pols = objs(overlay, "NetworkPolicy")
    deny = [p for p in pols if p["spec"]["podSelector"] == {} and p["spec"].get("ingress") is None]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    for p in pols:
        for rule in p["spec"].get("ingress", []):
            sources = rule.get("from")
            if sources is None:  # open to every source: only the promoter's API port
                assert p["spec"]["podSelector"] == {
                    "matchLabels": {"app.kubernetes.io/name": "ctrain-promoter"}
                }
                assert rule["ports"] == [{"protocol": "TCP", "port": SERVICES["promoter"]}]
                continue
            for s in sources:
                if "namespaceSelector" in s:  # Prometheus: the metrics port only
                    assert s["namespaceSelector"] == {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
                else:
                    assert set(s) == {"podSelector"}, s  # same namespace
    egress = one(overlay, "NetworkPolicy", "ctrain-trigger-egress")["spec"]["egress"]
    assert any(
        r.get("ports") == [{"protocol": "TCP", "port": 8888}]
        and r["to"][0]["namespaceSelector"]["matchLabels"]
        == {"kubernetes.io/metadata.name": "kubeflow"}
        for r in egress
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trigger_identity_for_kfp(overlay: str) -> None:
    dep = one(overlay, "Deployment", "ctrain-trigger")["spec"]["template"]["spec"]
    assert dep["serviceAccountName"] == "ctrain-trigger"
    one(overlay, "ServiceAccount", "ctrain-trigger")
    rb = one(overlay, "RoleBinding", "ctrain-trigger-kfp")
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": "ctrain-trigger", "namespace": namespace_of(overlay)}
    ]
    role = one(overlay, "ClusterRole", rb["roleRef"]["name"])
    runs = [r for r in role["rules"] if "runs" in r["resources"]]
    assert runs and {"create", "get", "list"} <= set(runs[0]["verbs"])
    assert all(r["apiGroups"] == ["pipelines.kubeflow.org"] for r in role["rules"])
    (vol,) = [v for v in dep["volumes"] if v["name"] == "kfp-token"]
    token = vol["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    (mount,) = [m for m in dep["containers"][0]["volumeMounts"] if m["name"] == "kfp-token"]
    # kfp.Client's default credentials path (KF_PIPELINES_SA_TOKEN_PATH)
    assert f"{mount['mountPath']}/{token['path']}" == "/var/run/secrets/kubeflow/pipelines/token"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_promoter_tokens_secret(overlay: str) -> None:
    secrets = {s["metadata"]["name"]: s for s in objs(overlay, "Secret")}
    if overlay == "prod":
        assert "ctrain-promoter-tokens" not in secrets, "prod tokens come from outside the repo"
        return
    book = json.loads(secrets["ctrain-promoter-tokens"]["stringData"]["tokens.json"])
    assert {v["role"] for v in book.values()} == {"viewer", "approver", "admin"}


def _strip(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"#.*", "", text)).strip()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_matches_compose(overlay: str) -> None:
    cm = one(overlay, "ConfigMap", "ctrain-serving")["data"]
    for f in ("models.config", "monitoring.config"):
        assert _strip(cm[f]) == _strip((DEPLOY / "serving" / f).read_text()), f
    dep = one(overlay, "Deployment", "ctrain-serving")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = [a for a in compose()["services"]["tfserving"]["command"]]
    assert c["args"] == args
    assert c["image"].split(":")[0] == "tensorflow/serving"
    # Two replicas, replaced one at a time; every pod addressed through the headless
    # Service; each starts from the config the promoter writes to the models volume.
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert "--model_config_file=/models/models.config" in c["args"]
    pods = one(overlay, "Service", "ctrain-serving-pods")["spec"]
    assert (
        pods["clusterIP"] == "None" and pods["selector"] == dep["spec"]["selector"]["matchLabels"]
    )
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]
    }
    promoter = one(overlay, "Deployment", "ctrain-promoter")["spec"]["template"]["spec"]
    pclaims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in promoter["volumes"]}
    assert claims["models"] in pclaims  # the promoter writes the versions serving loads
    env = container_env(overlay, "promoter")
    assert env["CTRAIN_SERVING_GRPC"] == "dns:///ctrain-serving-pods:8500"
    assert env["CTRAIN_PROMOTER_SERVING_CONFIG_FILE"] == "/models/models.config"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitor_reaches_serving_and_writes_artifacts(overlay: str) -> None:
    env = container_env(overlay, "monitor")
    svc = one(overlay, "Service", "ctrain-serving-pods")["spec"]["ports"]
    host, port = env["CTRAIN_SERVING_GRPC"].removeprefix("dns:///").split(":")
    assert host == "ctrain-serving-pods"
    assert {"name": "grpc", "port": int(port), "targetPort": "grpc"} in svc
    mounts = {m["name"]: m for m in container(overlay, "monitor")["volumeMounts"]}
    art = mounts["artifacts"]
    assert art["mountPath"] == env["CTRAIN_ARTIFACT_ROOT"] and not art.get("readOnly")
    pod = one(overlay, "Deployment", "ctrain-monitor")["spec"]["template"]["spec"]
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
    }
    assert claims["artifacts"] == "ctrain-artifacts"  # the RWX volume ingest writes shards to


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_a_statefulset_with_aof(overlay: str) -> None:
    sts = one(overlay, "StatefulSet", "ctrain-redis")
    conf = one(overlay, "ConfigMap", "ctrain-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects(overlay: str) -> None:
    pms = {p["metadata"]["name"]: p["spec"] for p in objs(overlay, "PodMonitor")}
    svc = pms["ctrain-services"]
    assert svc["jobLabel"] == "app.kubernetes.io/name"
    (expr,) = svc["selector"]["matchExpressions"]
    assert sorted(expr["values"]) == sorted(f"ctrain-{n}" for n in SERVICES)
    assert svc["podMetricsEndpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    serving = pms["ctrain-serving"]["podMetricsEndpoints"][0]
    assert serving["path"] == "/monitoring/prometheus/metrics"
    assert serving["relabelings"] == [{"targetLabel": "job", "replacement": "tf-serving"}]
    (rule,) = objs(overlay, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    (cm,) = [
        c
        for c in objs(overlay, "ConfigMap")
        if c["metadata"]["name"] == "ctrain-grafana-dashboards"
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboards_and_compose_prometheus_job_names_agree() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    assert {f"ctrain-{n}" for n in SERVICES} | {"tf-serving"} <= jobs
    assert ROOT.joinpath("deploy/prometheus/rules.yml").is_file()


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_mounts_the_models_file(overlay: str, name: str) -> None:
    """One models ConfigMap, mounted where CTRAIN_CONFIG points, valid as a models file."""
    from shared.config import parse_config

    path = Path(container_env(overlay, name)["CTRAIN_CONFIG"])
    mounts = {m["name"]: m["mountPath"] for m in container(overlay, name)["volumeMounts"]}
    assert mounts["models-config"] == str(path.parent)
    pod = one(overlay, "Deployment", f"ctrain-{name}")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = one(overlay, "ConfigMap", volumes["models-config"]["configMap"]["name"])
    cfg = parse_config(cm["data"][path.name], path.parent, "ctrain-models")
    example = yaml.safe_load((ROOT / "examples" / "taxi" / "ctrain.yaml").read_text())
    assert set(cfg.models) == set(example["models"])
    for m in cfg.models.values():  # files the image ships (Dockerfile COPY)
        assert m.schema_path.startswith("/app/examples/") and m.module.startswith("/app/examples/")
