"""docker-compose.yml, .env.example and the Dockerfile against the compose
specification and against the services they run."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from importlib import resources

import jsonschema
import pytest
import yaml

from shared import topics
from tests.deploy.support import (
    COMPOSE,
    DEPLOY,
    ENV_EXAMPLE,
    ROOT,
    SERVICES,
    compose,
    compose_env,
    compose_vars,
    dockerfile_stages,
    dotenv,
    known_env,
    load_settings,
    required_env,
    stage_chain,
)

pytestmark = pytest.mark.unit


def compose_schema() -> dict:
    # The Compose Specification's JSON schema as vendored by check-jsonschema.
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(ref.read_text())


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for doc in (compose(resolved=False), compose(resolved=True)):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_compose_file() -> None:
    """The schema check has teeth: a misspelled key fails."""
    schema = compose_schema()
    doc = compose()
    doc["services"]["ingest"]["healtcheck"] = doc["services"]["ingest"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_interpolation_variables_are_documented_and_not_settings() -> None:
    used = compose_vars(COMPOSE.read_text())
    documented = dotenv()
    assert used - set(documented) == set(), "document these in .env.example"
    assert set(documented) - used == set(), ".env.example lists unused variables"
    # CTRAIN_* is the services' namespace: a compose knob with that prefix would look
    # like (and, exported, become) a service setting.
    assert not [k for k in documented if k.startswith("CTRAIN_")]
    assert ENV_EXAMPLE.read_text().endswith("\n")


CONTROL = ("trigger", "promoter", "monitor")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_env_is_known_complete_and_loads(name: str) -> None:
    svc = compose()["services"][name]
    env = compose_env(svc)
    ctrain = {k: v for k, v in env.items() if k.startswith("CTRAIN_")}
    assert set(ctrain) - known_env(name) == set(), "not a setting of this service"
    assert required_env(name) - set(ctrain) == set(), "required settings missing"
    assert ctrain[f"CTRAIN_{name.upper()}_HTTP_HOST"] == "0.0.0.0"
    common, own = load_settings(name, ctrain)  # exactly what the service does at start-up
    assert own.http_port == SERVICES[name]
    assert common.kafka_bootstrap == "kafka:9092"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_image_command_ports_and_health(name: str) -> None:
    doc = compose()
    svc = doc["services"][name]
    port = SERVICES[name]
    assert svc["build"] == {"context": ".", "target": name}
    assert svc["image"].split(":")[0] == f"ctrain-{name}"
    assert "command" not in svc and "entrypoint" not in svc, "the image's entrypoint runs it"
    assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [str(port)]
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/ctrain-healthz", name]
    deps = svc["depends_on"]
    assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert deps["volume-init"]["condition"] == "service_completed_successfully"
    assert deps["redis"]["condition"] == "service_healthy"
    assert "artifacts:/artifacts" in svc["volumes"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    targets = [f"{name}:{port}"]
    if name in CONTROL:
        # The second replica: the same service under its own name and host port, and
        # scraped under the same job.
        second = doc["services"][f"{name}-2"]
        assert {k: v for k, v in second.items() if k != "ports"} == {
            k: v for k, v in svc.items() if k != "ports"
        }
        assert [p.rsplit(":", 1)[1] for p in second["ports"]] == [str(port)]
        assert second["ports"] != svc["ports"]
        targets.append(f"{name}-2:{port}")
    assert jobs[f"ctrain-{name}"]["static_configs"][0]["targets"] == targets


def test_control_services_share_the_lease_settings() -> None:
    for name in CONTROL:
        env = compose_env(compose()["services"][f"{name}-2"])
        common, _ = load_settings(name, {k: v for k, v in env.items() if k.startswith("CTRAIN_")})
        assert common.lease_ttl_s == 10


def test_promoter_reaches_serving_and_models() -> None:
    doc = compose()
    p, s = doc["services"]["promoter"], doc["services"]["tfserving"]
    env = compose_env(p)
    assert p["depends_on"]["tfserving"]["condition"] == "service_healthy"
    assert "models:/models" in p["volumes"] and "models:/models:ro" in s["volumes"]
    assert env["CTRAIN_SERVING_BASE"] == "/models"
    assert env["CTRAIN_SERVING_GRPC"] == "dns:///tfserving:8500"
    assert env["CTRAIN_PROMOTER_SERVING_CONFIG_FILE"] == "/models/models.config"
    assert s["deploy"]["replicas"] == 2
    assert env["CTRAIN_PROMOTER_TOKENS_FILE"] == "/run/secrets/promoter_tokens"
    tokens = json.loads((ROOT / doc["secrets"]["promoter_tokens"]["file"]).read_text())
    assert {v["role"] for v in tokens.values()} <= {"viewer", "approver", "admin"}
    args = s["command"]
    for flag in (
        "--port=8500",
        "--rest_api_port=8501",
        "--model_config_file=/models/models.config",
        "--model_config_file_poll_wait_seconds=0",
        "--allow_version_labels_for_unavailable_models=true",
        "--monitoring_config_file=/config/monitoring.config",
    ):
        assert flag in args
    assert (
        'path: "/monitoring/prometheus/metrics"'
        in (DEPLOY / "serving" / "monitoring.config").read_text()
    )


def test_monitor_reaches_serving_and_writes_artifacts() -> None:
    doc = compose()
    m = doc["services"]["monitor"]
    env = compose_env(m)
    assert m["depends_on"]["tfserving"]["condition"] == "service_healthy"
    assert env["CTRAIN_SERVING_GRPC"] == "dns:///tfserving:8500"
    assert "--port=8500" in doc["services"]["tfserving"]["command"]
    # it writes <artifact root>/quality/: the artifacts volume is mounted read-write
    assert env["CTRAIN_ARTIFACT_ROOT"] == "/artifacts" and "artifacts:/artifacts" in m["volumes"]


def test_healthcheck_script_knows_every_service() -> None:
    """ctrain-healthz <service> probes the service's default port; an unknown name exits 2."""
    spec = importlib.util.spec_from_file_location("healthz", DEPLOY / "docker" / "healthz.py")
    assert spec is not None and spec.loader is not None
    healthz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthz)
    assert healthz.DEFAULT_PORTS == SERVICES
    assert healthz.main(["no-such-service"]) == 2


def test_topics_are_the_contracts_topics() -> None:
    init = compose()["services"]["kafka-init"]
    specs = dict(s.split("=") for s in init["environment"]["TOPICS"].split())
    assert tuple(specs) == topics.ALL
    assert all(int(v) == -1 or int(v) > 0 for v in specs.values())
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    kafka = compose()["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    assert str(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"


def test_redis_appends_and_monitoring_is_wired() -> None:
    doc = compose()
    cmd = doc["services"]["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    prom = doc["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in prom
    graf = doc["services"]["grafana"]
    assert graf["depends_on"]["prometheus"]["condition"] == "service_healthy"
    every = {k for k, v in doc["services"].items() if v.get("restart") != "no"}
    assert {k for k in every if "healthcheck" not in doc["services"][k]} == set()


# ---------------------------------------------------------------- Dockerfile
def pyproject_extras() -> set[str]:
    return set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dockerfile_target_per_service(name: str) -> None:
    stages = dockerfile_stages()
    final = stages[name]
    assert final.json("ENTRYPOINT") == ["python", "-m", f"services.{name}"]
    assert final.all("EXPOSE") == [str(SERVICES[name])]
    assert final.last("USER") == "10001:10001"
    health = final.last("HEALTHCHECK") or ""
    assert f'"ctrain-healthz", "{name}"' in health.replace("/usr/local/bin/", "")
    env = {k: v for s in reversed(stage_chain(stages, name)) for k, v in s.env().items()}
    ctrain = {k: v for k, v in env.items() if k.startswith("CTRAIN_")}
    assert set(ctrain) - known_env(name) == set()
    assert ctrain[f"CTRAIN_{name.upper()}_HTTP_HOST"] == "0.0.0.0"
    assert ctrain[f"CTRAIN_{name.upper()}_HTTP_PORT"] == str(SERVICES[name])
    # the venv comes from build-<name>, built on deps-<name>, which installs only its extra
    copy = [a for a in final.all("COPY") if "/opt/venv" in a]
    assert copy == [f"--from=build-{name} /opt/venv /opt/venv"]
    deps = stage_chain(stages, f"build-{name}")[1]
    assert deps.name == f"deps-{name}"
    (run,) = deps.all("RUN")
    assert re.search(rf"uv sync --frozen --no-install-project --no-dev --extra {name}$", run)
    assert name in pyproject_extras()
    assert stage_chain(stages, name)[-1].base.startswith("${PYTHON_IMAGE}")


def test_dockerfile_base_and_modelserver() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    stages = dockerfile_stages()
    ms = stages["modelserver"]
    assert ms.json("ENTRYPOINT") == ["python", "-m", "ctrain.modelserver"]
    cmd = ms.json("CMD") or []
    assert "--port=8500" in cmd and "--rest_api_port=8501" in cmd
    assert any(c.startswith("--model_config_file=") for c in cmd)
    assert ms.last("USER") == "10001:10001"
    # everything the Dockerfile copies from the context is let in by .dockerignore
    ignore = (ROOT / ".dockerignore").read_text()
    for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, re.M):
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, src


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_mounts_the_example_models_file(name: str) -> None:
    svc = compose()["services"][name]
    target = compose_env(svc)["CTRAIN_CONFIG"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts[target] == "./examples/taxi/ctrain.yaml"
