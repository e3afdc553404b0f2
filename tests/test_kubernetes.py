"""The generated Kubernetes manifests (deploy/kubernetes), every combination, offline.

`kubectl kustomize` builds the production overlay from the example env files; every core
object is validated against a pinned Kubernetes schema (kubernetes-validate), the KEDA objects
against KEDA's own models (cloudcoil-models-keda, generated from KEDA's CRDs); then the
cross-references no schema sees: selectors and labels, the objects that name each other, the
names the KEDA trigger shares with the generated code, and that every setting is provided.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helpers
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from conftest import Rendered, unavailable

sys.path.insert(0, str(Path(__file__).resolve().parent / "delivery"))

import services

pytestmark = pytest.mark.kubernetes

COMBOS = helpers.combos()
parametrize_combos = pytest.mark.parametrize("combo", COMBOS, ids=str)

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# The oldest Kubernetes the manifests promise to run on (preStop `sleep`: 1.30+).
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZE_DIR = Path("deploy/kubernetes")
OVERLAY = KUSTOMIZE_DIR / "overlays" / "production"
KEDA_MODELS = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}
POD_KINDS = {"Deployment", "Job"}
# Set on a container, not through the ConfigMap: only that process reads it.
CONTAINER_ENV = {"PROMETHEUS_MULTIPROC_DIR"}


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


@functools.cache
def _build(project: Path) -> tuple[dict[str, Any], ...]:
    """The overlay, built from a copy of deploy/kubernetes with the example env files."""
    work = project.parent / f"{project.name}-kubernetes"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(project / KUSTOMIZE_DIR, work)
    overlay = work / OVERLAY.relative_to(KUSTOMIZE_DIR)
    for name in ("settings.env", "secrets.env"):
        shutil.copyfile(overlay / f"{name}.example", overlay / name)
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


class Manifests:
    def __init__(self, rendered: Rendered) -> None:
        self.rendered = rendered
        self.docs = _build(rendered.path)
        answers = yaml.safe_load((rendered.path / helpers.answers_file_name()).read_text("utf-8"))
        self.derived = helpers.derive({**rendered.combo.answers, **answers})
        self.slug = answers["project_slug"]
        self.settings_example = read_env_file(rendered.path / OVERLAY / "settings.env.example")
        self.secrets_example = read_env_file(rendered.path / OVERLAY / "secrets.env.example")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def generated(self, kind: str, prefix: str) -> dict[str, Any]:
        """The ConfigMap/Secret a generator made (its name carries a content hash)."""
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].startswith(prefix + "-")]
        assert len(found) == 1, f"expected one generated {kind} {prefix}-<hash>"
        return found[0]

    @property
    def config_map(self) -> dict[str, Any]:
        return self.generated("ConfigMap", f"{self.slug}-settings")

    @property
    def secret(self) -> dict[str, Any]:
        return self.generated("Secret", f"{self.slug}-secrets")

    def pod_specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            for doc in self.docs
            if doc["kind"] in POD_KINDS
        ]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.one("Deployment", f"{self.slug}-{component}")


@pytest.fixture
def manifests(rendered: Rendered) -> Manifests:
    return Manifests(rendered)


def settings_fields(rendered: Rendered) -> dict[str, ast.expr | None]:
    """The generated Settings class's fields (env var name -> default expression)."""
    tree = ast.parse(rendered.read("src/{pkg}/infrastructure/config/settings.py"))
    settings = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    return {
        node.target.id.upper(): node.value
        for node in settings.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id != "model_config"
    }


def default_of(expression: ast.expr | None) -> Any:
    """A field's literal default: `= "x"` or `= Field(default=x, ...)`."""
    assert expression is not None
    if isinstance(expression, ast.Call):
        return next(ast.literal_eval(kw.value) for kw in expression.keywords if kw.arg == "default")
    return ast.literal_eval(expression)


# ---------------------------------------------------------------------------------------------
# Build and schemas
# ---------------------------------------------------------------------------------------------


@parametrize_combos
def test_overlay_builds_and_core_objects_match_the_kubernetes_schema(
    manifests: Manifests,
) -> None:
    kinds = {doc["kind"] for doc in manifests.docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
    } <= kinds
    assert {"ConfigMap", "Secret", "ScaledObject", "TriggerAuthentication"} <= kinds
    for doc in manifests.docs:
        if doc["kind"] in KEDA_MODELS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def _unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Fields of `given` that the model dropped (the models ignore unknown fields)."""
    if isinstance(given, dict):
        assert isinstance(parsed, dict), path
        missing = [f"{path}.{key}" for key in given if key not in parsed]
        return missing + [
            found
            for key, value in given.items()
            if key in parsed
            for found in _unknown_fields(value, parsed[key], f"{path}.{key}")
        ]
    if isinstance(given, list):
        return [
            found
            for index, (a, b) in enumerate(zip(given, parsed, strict=True))
            for found in _unknown_fields(a, b, f"{path}[{index}]")
        ]
    return []


@parametrize_combos
def test_keda_objects_match_kedas_schema(manifests: Manifests) -> None:
    for kind, model in KEDA_MODELS.items():
        for doc in manifests.of_kind(kind):
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            parsed = model.model_validate(doc).model_dump(by_alias=True, exclude_none=True)
            assert not _unknown_fields(doc, parsed), f"{kind}: fields KEDA does not know"


# ---------------------------------------------------------------------------------------------
# Cross-references
# ---------------------------------------------------------------------------------------------


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@parametrize_combos
def test_selectors_services_autoscalers_and_budgets_find_their_pods(manifests: Manifests) -> None:
    deployments = manifests.of_kind("Deployment")
    for doc in deployments:
        selector = doc["spec"]["selector"]["matchLabels"]
        assert _matches(selector, doc["spec"]["template"]["metadata"]["labels"])
        others = [d for d in deployments if d is not doc]
        # No Deployment's selector takes another one's pods.
        assert not any(
            _matches(selector, o["spec"]["template"]["metadata"]["labels"]) for o in others
        )

    api = manifests.deployment("api")
    (service,) = manifests.of_kind("Service")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    port_names = {
        p["name"] for c in api["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    (hpa,) = manifests.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    budgets = {
        doc["metadata"]["name"]: doc["spec"]["selector"]["matchLabels"]
        for doc in manifests.of_kind("PodDisruptionBudget")
    }
    for component in ("api", "worker"):
        pods = manifests.deployment(component)["spec"]["template"]["metadata"]["labels"]
        assert any(_matches(selector, pods) for selector in budgets.values()), component


@parametrize_combos
def test_scaled_object_scales_the_worker_on_the_queue_the_code_uses(
    manifests: Manifests, rendered: Rendered
) -> None:
    (scaled,) = manifests.of_kind("ScaledObject")
    worker = manifests.deployment("worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == (
        "Deployment",
        worker["metadata"]["name"],
    )
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["cooldownPeriod"] > 0

    (trigger,) = scaled["spec"]["triggers"]
    expected = manifests.derived["keda_trigger"]
    assert trigger["type"] == expected["type"]
    fields = settings_fields(rendered)
    queue = default_of(fields["TASKIQ_QUEUE_NAME"])
    # The generated code's defaults, the example ConfigMap and the trigger name the same queue.
    assert manifests.settings_example["TASKIQ_QUEUE_NAME"] == queue
    metadata = trigger["metadata"]
    if trigger["type"] == "redis-streams":
        stream_broker = rendered.read("src/{pkg}/infrastructure/taskiq/redis_stream.py")
        assert "consumer_group_name=queue_name" in stream_broker  # the group is the queue
        assert metadata["stream"] == metadata["consumerGroup"] == queue == expected["stream"]
        database = default_of(fields["TASKIQ_REDIS_DB"])
        assert int(metadata["databaseIndex"]) == database == expected["database_index"]
        assert int(manifests.settings_example["TASKIQ_REDIS_DB"]) == database
        assert "lagCount" in metadata and "pendingEntriesCount" not in metadata
        # Host and port come from the worker container's environment: the ConfigMap.
        assert metadata["hostFromEnv"] in manifests.config_map["data"]
        assert metadata["portFromEnv"] in manifests.config_map["data"]
    else:
        assert metadata["queueName"] == queue == expected["queue"]
        assert metadata["mode"] == "QueueLength"

    auth = manifests.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = manifests.secret
    for ref in auth["spec"]["secretTargetRef"]:
        # kustomize rewrote the generated Secret's hashed name here too (kustomizeconfig.yaml).
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["data"]
        assert ref["key"] in manifests.secrets_example


@parametrize_combos
def test_every_setting_is_provided_and_every_key_is_a_setting(
    manifests: Manifests, rendered: Rendered
) -> None:
    settings = set(settings_fields(rendered))
    config = set(manifests.config_map["data"])
    secret = set(manifests.secret["data"])
    derived = manifests.derived
    assert secret == set(derived["kubernetes_secret_keys"]) | set(
        derived["kubernetes_keda_secret_keys"]
    )
    assert set(manifests.secrets_example) == secret
    assert set(manifests.settings_example) == config
    assert not config & secret, "a key in both the ConfigMap and the Secret"
    assert settings <= config | secret, (
        f"settings no manifest provides: {settings - config - secret}"
    )
    unread = (config | secret) - settings - set(derived["kubernetes_keda_secret_keys"])
    assert not unread, f"keys nothing reads: {unread}"
    # Every pod gets both, and names only keys that exist.
    for where, spec in manifests.pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            refs = {
                next(iter(ref)): ref[next(iter(ref))]["name"]
                for ref in container.get("envFrom", [])
            }
            assert refs == {
                "configMapRef": manifests.config_map["metadata"]["name"],
                "secretRef": manifests.secret["metadata"]["name"],
            }, where
            for env in container.get("env", []):
                assert env["name"] in CONTAINER_ENV | settings, f"{where}: {env['name']}"
                key_ref = env.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["key"] in manifests.secrets_example


@parametrize_combos
def test_no_secret_value_is_committed(rendered: Rendered) -> None:
    files = {path.as_posix() for path in rendered.files}
    for name in ("settings.env", "secrets.env"):
        assert (OVERLAY / f"{name}.example").as_posix() in files
        assert (OVERLAY / name).as_posix() not in files
        assert f"deploy/kubernetes/overlays/*/{name}" in rendered.read(".gitignore").splitlines()
    for key, value in read_env_file(rendered.path / OVERLAY / "secrets.env.example").items():
        assert "CHANGE-ME" in value, f"{key} has a value in the example"


# ---------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------


@parametrize_combos
def test_every_pod_is_hardened_and_bounded(manifests: Manifests) -> None:
    worker_dir = None
    for where, spec in manifests.pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where
        volumes = spec.get("volumes", [])
        assert all(set(volume) == {"name", "emptyDir"} for volume in volumes), where
        if where.endswith("-worker"):
            (container,) = spec["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            worker_dir = env["PROMETHEUS_MULTIPROC_DIR"]
            assert [m["mountPath"] for m in container["volumeMounts"]] == [worker_dir]
        else:
            assert not volumes, f"{where}: a writable volume it does not need"
    assert worker_dir is not None


@parametrize_combos
def test_probes_commands_and_rollout_rules(manifests: Manifests, rendered: Rendered) -> None:
    router = rendered.read("src/{pkg}/infrastructure/health/router.py")
    api = manifests.deployment("api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for path in ("/health", "/health/live"):
        assert f'@router.get("{path}"' in router

    # Every `python -m <module>` a pod runs exists in the package.
    for where, spec in manifests.pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            commands = [container["command"]]
            probe = container.get("livenessProbe", {}).get("exec")
            if probe:
                commands.append(probe["command"])
            for command in commands:
                if command[:2] == ["python", "-m"]:
                    module = Path("src", *command[2].split("."))
                    assert (rendered.path / module.with_suffix(".py")).exists() or (
                        rendered.path / module / "__main__.py"
                    ).exists(), f"{where}: {command}"

    worker = manifests.deployment("worker")["spec"]["template"]["spec"]
    shutdown = float(manifests.settings_example["TASKIQ_SHUTDOWN_TIMEOUT_SECONDS"])
    assert shutdown == default_of(settings_fields(rendered)["TASKIQ_SHUTDOWN_TIMEOUT_SECONDS"])
    assert worker["terminationGracePeriodSeconds"] >= shutdown + 10
    assert worker["containers"][0]["livenessProbe"]["exec"]["command"][2].endswith(
        ".infrastructure.taskiq.liveness"
    )

    (job,) = manifests.of_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "alembic",
        "upgrade",
        "heads",
    ]

    schedulers = [
        d for d in manifests.of_kind("Deployment") if d["metadata"]["name"].endswith("-scheduler")
    ]
    if rendered.combo.answers.get("include_scheduler", True):
        (scheduler,) = schedulers
        assert scheduler["spec"]["replicas"] == 1
        assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
        assert "autoscaling" not in str(scheduler)
    else:
        assert not schedulers


@parametrize_combos
def test_images_come_from_the_overlay(manifests: Manifests) -> None:
    images = {
        container["image"]
        for _, spec in manifests.pod_specs()
        for container in spec.get("initContainers", []) + spec["containers"]
    }
    assert images == {f"registry.example.com/{manifests.slug}:0.1.0"}
    assert all(
        re.fullmatch(r"[a-z0-9-]+", doc["metadata"].get("namespace", "")) for doc in manifests.docs
    )


# ---------------------------------------------------------------------------------------------
# Against the real broker: the number the trigger reads is the generated code's backlog
# ---------------------------------------------------------------------------------------------

METRIC_SCRIPT = Path(__file__).resolve().parent / "kubernetes" / "keda_metric.py"
METRIC_TASKS = 25


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_trigger_metric_counts_the_tasks_sent_and_drains_with_a_worker(
    broker: str,
    render_cache: Any,
    shared_python: Any,
    require_services: Any,
    tmp_path: Path,
) -> None:
    combo = helpers.pick_combo({"broker": broker, "result_backend": "redis"})
    rendered = render_cache(combo)
    manifests = Manifests(rendered)
    (scaled,) = manifests.of_kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    env = helpers.generated_test_env(combo)
    env.pop("TASKIQ_QUEUE_NAME", None)  # the code's own default: the name under test
    if broker == "rabbitmq":
        require_services(["rabbitmq"])
        names = ["--queue", metadata["queueName"]]
    else:
        names = [
            "--stream", metadata["stream"],
            "--group", metadata["consumerGroup"],
            "--db", metadata["databaseIndex"],
        ]  # fmt: skip
        env["TASKIQ_REDIS_DB"] = metadata["databaseIndex"]
    if services.redis_server_binary() is None:
        unavailable("redis-server is not installed: this test starts its own Redis")
    redis = services.PrivateRedis(tmp_path)
    redis.start()
    try:
        env["TASKIQ_REDIS_HOST"], env["TASKIQ_REDIS_PORT"] = "127.0.0.1", str(redis.port)
        python = shared_python(str(combo.answers["python_version"]))
        command = [
            str(python), str(METRIC_SCRIPT), "--package", combo.package,
            "--count", str(METRIC_TASKS), "--workdir", str(tmp_path), *names,
        ]  # fmt: skip
        proc = helpers.run(
            command,
            cwd=rendered.path,
            env=env,
            timeout=400,
        )
    finally:
        redis.stop()
    assert proc.returncode == 0, helpers.explain(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = {k: v for k, v in result.items() if k not in {"worker_log", "liveness_output"}}
    print(f"[{broker}] {trigger['type']} {names}: {figures}")
    assert result["before"] == METRIC_TASKS, result
    assert result["after"] == 0, result["worker_log"]
    assert result["liveness"] == 0, result["liveness_output"]
