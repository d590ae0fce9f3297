"""Static checks of deploy/: Kubernetes manifests, Dockerfile and Grafana dashboard.

Nothing here needs a cluster, a docker engine or the network. kubernetes-validate checks
each manifest against the JSON schemas of pinned Kubernetes versions, which its wheel
ships. The other tests check that the files agree with each other and with the
aggregator's own config loader.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from aggregator.config import ListenAddress, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
KUSTOMIZATION = KUBERNETES_DIR / "kustomization.yaml"
SERVICE_MONITOR = KUBERNETES_DIR / "optional" / "servicemonitor.yaml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
DASHBOARD = DEPLOY_DIR / "grafana" / "aggregator.json"

# The oldest Kubernetes minor version the manifests target, and the newest one whose
# schemas kubernetes-validate 1.37.0 (pinned in the test extra) ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Kinds defined by a CustomResourceDefinition, for which kubernetes-validate has no schema.
# test_service_monitor_fields checks them instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

APP_USER_ID = 10001
CONFIG_PATH = "/etc/aggregator/config.yml"
EXPECTED_EXPOSED_PORTS = {"6969/tcp", "6969/udp", "9090/tcp"}

# Metrics that the service exports, with their labels. A histogram's series are its name
# plus _bucket, _sum and _count, and the _bucket series also carry `le`.
EXPORTED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "aggregator_announces_total": ("counter", frozenset({"transport", "event", "outcome"})),
    "aggregator_scrapes_total": ("counter", frozenset({"transport", "outcome"})),
    "aggregator_reply_latency_seconds": ("histogram", frozenset({"transport"})),
    "aggregator_swarms": ("gauge", frozenset()),
    "aggregator_peers": ("gauge", frozenset()),
    "aggregator_seeders": ("gauge", frozenset()),
    "aggregator_leechers": ("gauge", frozenset()),
    "aggregator_batches": ("gauge", frozenset()),
    "aggregator_ready_backlog": ("gauge", frozenset()),
    "aggregator_pressure": ("gauge", frozenset()),
    "aggregator_flush_lag_seconds": ("histogram", frozenset()),
    "aggregator_workers": ("gauge", frozenset()),
    "aggregator_busy_workers": ("gauge", frozenset()),
    "aggregator_upstream_requests_total": ("counter", frozenset({"forwarder", "outcome"})),
    "aggregator_upstream_latency_seconds": ("histogram", frozenset({"forwarder"})),
    "aggregator_forwarder_state": ("gauge", frozenset({"forwarder", "state"})),
    "aggregator_coalesced_announces_total": ("counter", frozenset()),
    "aggregator_admission_decisions_total": ("counter", frozenset({"decision"})),
    "aggregator_upstream_cached_peers": ("gauge", frozenset()),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Labels that Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})

# A Prometheus duration such as 30s or 1m30s, as the ServiceMonitor CRD accepts it.
PROMETHEUS_DURATION = re.compile(r"(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?")
METRIC_NAME = re.compile(r"\baggregator_[a-z0-9_]+")
GROUPING_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


# --- Loading ------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Parse every YAML document of a file, skipping empty ones."""
    with path.open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def manifest_files() -> list[Path]:
    """Return every Kubernetes manifest under deploy/kubernetes, the optional ones included."""
    files = sorted([*KUBERNETES_DIR.rglob("*.yaml"), *KUBERNETES_DIR.rglob("*.yml")])
    return [path for path in files if path.name != "kustomization.yaml"]


def kustomization_resources() -> list[str]:
    kustomization = load_documents(KUSTOMIZATION)[0]
    resources: list[str] = kustomization["resources"]
    return resources


def base_documents() -> list[dict[str, Any]]:
    """Return the documents of the resources that kustomization.yaml lists."""
    documents = []
    for resource in kustomization_resources():
        documents.extend(load_documents(KUBERNETES_DIR / resource))
    return documents


def base_resource(kind: str) -> dict[str, Any]:
    """Return the only resource of a kind in the base, failing when there are none or several."""
    matches = [document for document in base_documents() if document["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind} in the kustomize base, found {len(matches)}"
    return matches[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = base_resource("Deployment")["spec"]["template"]["spec"]
    return spec


def aggregator_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, f"expected one container in the pod, found {len(containers)}"
    container: dict[str, Any] = containers[0]
    return container


def config_map_data() -> dict[str, str]:
    data: dict[str, str] = base_resource("ConfigMap")["data"]
    return data


@pytest.fixture
def pod_settings(tmp_path: Path) -> Settings:
    """Load the ConfigMap's config.yml with the aggregator's own loader.

    Both ConfigMap files are written to a temporary folder. The config names
    forwarders_file by its path in the pod, which does not exist here, so the
    --forwarders-file option points the loader at the copy instead.
    """
    data = config_map_data()
    config_file = tmp_path / "config.yml"
    forwarders_file = tmp_path / "forwarders.yml"
    config_file.write_text(data["config.yml"], encoding="utf-8")
    forwarders_file.write_text(data["forwarders.yml"], encoding="utf-8")

    return load_settings(["--config", str(config_file), "--forwarders-file", str(forwarders_file)], {})


def container_port(name_or_number: str | int, protocol: str = "TCP") -> int:
    """Resolve a probe or Service target port, given by name or by number, to a container port."""
    for port in aggregator_container()["ports"]:
        if port.get("protocol", "TCP") != protocol:
            continue
        if name_or_number in (port.get("name"), port["containerPort"]):
            number: int = port["containerPort"]
            return number
    raise AssertionError(f"no {protocol} container port named or numbered {name_or_number!r}")


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- Schema validation --------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate() -> ModuleType:
    """Import kubernetes-validate. A missing package skips the test, except with CI=true, where it fails."""
    try:
        import kubernetes_validate as module
    except ImportError:
        message = "kubernetes-validate is not installed. Install the test extra: pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return module


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: str(path.relative_to(KUBERNETES_DIR)))
def test_manifest_schema_valid(kubernetes_validate: ModuleType, path: Path, version: str) -> None:
    documents = load_documents(path)
    assert documents, f"{path} contains no YAML document"

    problems = []
    for document in documents:
        if (document.get("apiVersion"), document.get("kind")) in CUSTOM_KINDS:
            continue

        # strict=True also rejects fields that the schema does not define, such as typos.
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(item) for item in error.path) or "the top level"
            problems.append(f"{document['kind']} invalid for Kubernetes {version} at {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(error.message)

    # Reported outside the except blocks, so the message is not buried in the validator's traceback.
    if problems:
        pytest.fail(f"{path.name}: " + "; ".join(problems), pytrace=False)


def test_validator_rejects_unknown_field(kubernetes_validate: ModuleType) -> None:
    deployment = copy.deepcopy(base_resource("Deployment"))
    deployment["spec"]["replica"] = 1

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_service_monitor_fields() -> None:
    # The ServiceMonitor schema comes from the Prometheus Operator's CRD, which
    # kubernetes-validate does not ship, so its fields are checked here by hand. The CRD of
    # operator 0.84.1 requires spec.selector and spec.endpoints.
    documents = load_documents(SERVICE_MONITOR)
    assert len(documents) == 1
    monitor = documents[0]
    service = base_resource("Service")

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    assert selector_matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])

    service_port_names = {port["name"] for port in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints, "the ServiceMonitor has no endpoints"
    for endpoint in endpoints:
        assert endpoint["port"] in service_port_names
        assert endpoint["path"] == "/metrics"
        assert PROMETHEUS_DURATION.fullmatch(endpoint["interval"]), f"invalid interval {endpoint['interval']!r}"


# --- Kustomization ------------------------------------------------------------------


def test_kustomization_resources_exist() -> None:
    resources = kustomization_resources()

    assert len(resources) == len(set(resources)), f"resources listed twice in {KUSTOMIZATION.name}"
    for resource in resources:
        path = (KUBERNETES_DIR / resource).resolve()
        assert path.is_file(), f"{KUSTOMIZATION.name} lists {resource}, which does not exist"
        assert path.is_relative_to(KUBERNETES_DIR), f"{resource} is outside the kustomize root"


def test_kustomization_lists_every_base_file() -> None:
    listed = {(KUBERNETES_DIR / resource).resolve() for resource in kustomization_resources()}
    base_files = {path.resolve() for path in manifest_files() if path.parent == KUBERNETES_DIR}

    assert base_files - listed == set(), "manifests next to kustomization.yaml that it does not list"


def test_service_monitor_not_in_base() -> None:
    # A cluster without the Prometheus Operator rejects a ServiceMonitor, so it stays optional.
    kinds = {document["kind"] for document in base_documents()}

    assert "ServiceMonitor" not in kinds


def test_base_resources_share_namespace() -> None:
    namespace = base_resource("Namespace")["metadata"]["name"]

    for document in base_documents():
        if document["kind"] == "Namespace":
            continue
        assert document["metadata"].get("namespace") == namespace, f"{document['kind']} is not in {namespace}"


# --- Deployment and its config ------------------------------------------------------


def test_deployment_single_replica_recreate() -> None:
    spec = base_resource("Deployment")["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def test_config_map_loads(pod_settings: Settings) -> None:
    assert pod_settings.listen == (ListenAddress("0.0.0.0", 6969),)
    assert pod_settings.udp_listen == (ListenAddress("0.0.0.0", 6969),)
    assert pod_settings.admin_listen == ListenAddress("0.0.0.0", 9090)
    assert pod_settings.state_file == "/var/lib/aggregator/state.json"


def test_config_map_paths_in_pod() -> None:
    config = yaml.safe_load(config_map_data()["config.yml"])
    config_mount = next(mount for mount in aggregator_container()["volumeMounts"] if mount["name"] == "config")

    forwarders_path = Path(config["forwarders_file"])
    assert forwarders_path.parent == Path(config_mount["mountPath"])
    assert forwarders_path.name in config_map_data()


def test_forwarders_examples_only_invalid_hosts() -> None:
    # The base must not make a new installation announce to somebody's real tracker, so every
    # URL in the file, commented examples included, uses the reserved .invalid top-level domain.
    text = config_map_data()["forwarders.yml"]
    hosts = re.findall(r"[a-z]+://([^/:\s]+)", text)

    assert hosts, "forwarders.yml shows no example entry"
    for host in hosts:
        assert host.endswith(".invalid"), f"forwarders.yml names the real host {host}"


def test_config_file_argument_matches_mount() -> None:
    container = aggregator_container()
    config_mount = next(mount for mount in container["volumeMounts"] if mount["name"] == "config")
    config_volume = next(volume for volume in pod_spec()["volumes"] if volume["name"] == "config")

    assert container["args"] == ["--config", CONFIG_PATH]
    assert Path(CONFIG_PATH).parent == Path(config_mount["mountPath"])
    assert config_mount.get("readOnly") is True
    assert config_volume["configMap"]["name"] == base_resource("ConfigMap")["metadata"]["name"]
    assert Path(CONFIG_PATH).name in config_map_data()


def test_state_file_on_writable_volume(pod_settings: Settings) -> None:
    assert pod_settings.state_file is not None
    state_dir = Path(pod_settings.state_file).parent
    mounts = {Path(mount["mountPath"]): mount for mount in aggregator_container()["volumeMounts"]}

    assert state_dir in mounts, f"no volume is mounted at {state_dir}"
    assert not mounts[state_dir].get("readOnly", False)


def test_probes_use_admin_port(pod_settings: Settings) -> None:
    container = aggregator_container()
    assert pod_settings.admin_listen is not None
    admin_port = pod_settings.admin_listen.port

    expected_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe_name, path in expected_paths.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, f"{probe_name} requests {probe['path']}"
        assert container_port(probe["port"]) == admin_port, f"{probe_name} does not use the admin port"


def test_grace_period_exceeds_drain(pod_settings: Settings) -> None:
    # After SIGTERM the aggregator drains for up to drain_timeout_s and then writes its
    # snapshot. The kubelet sends SIGKILL once the grace period ends.
    grace_period_s = pod_spec()["terminationGracePeriodSeconds"]

    assert grace_period_s > pod_settings.drain_timeout_s


def test_container_ports_match_config(pod_settings: Settings) -> None:
    assert pod_settings.admin_listen is not None
    expected = {(address.port, "TCP") for address in pod_settings.listen}
    expected |= {(address.port, "UDP") for address in pod_settings.udp_listen}
    expected.add((pod_settings.admin_listen.port, "TCP"))

    ports = {(port["containerPort"], port.get("protocol", "TCP")) for port in aggregator_container()["ports"]}
    assert ports == expected


def test_service_ports_match_container() -> None:
    service_ports = base_resource("Service")["spec"]["ports"]
    container_ports = {(port["containerPort"], port.get("protocol", "TCP")) for port in aggregator_container()["ports"]}

    targets = set()
    for port in service_ports:
        protocol = port.get("protocol", "TCP")
        assert port.get("name"), f"Service port {port['port']}/{protocol} has no name"
        targets.add((container_port(port.get("targetPort", port["port"]), protocol), protocol))
    assert targets == container_ports


def test_selectors_match_pod_labels() -> None:
    pod_labels = base_resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": base_resource("Deployment")["spec"]["selector"]["matchLabels"],
        "Service": base_resource("Service")["spec"]["selector"],
        "PodDisruptionBudget": base_resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }

    for kind, selector in selectors.items():
        assert selector, f"the {kind} selector is empty"
        assert selector_matches(selector, pod_labels), f"the {kind} selector does not match the pod"


def test_disruption_budget_allows_drain() -> None:
    # With one replica, minAvailable: 1 or maxUnavailable: 0 would block every node drain.
    spec = base_resource("PodDisruptionBudget")["spec"]

    assert "minAvailable" not in spec
    assert spec["maxUnavailable"] == 1


def test_service_links_disabled() -> None:
    # Service links would set AGGREGATOR_SERVICE_HOST and similar variables for the Service
    # named "aggregator", and the aggregator stops at start on an unknown AGGREGATOR_* variable.
    assert pod_spec()["enableServiceLinks"] is False


def test_pod_security_restricted() -> None:
    pod_security = pod_spec()["securityContext"]
    container_security = aggregator_container()["securityContext"]

    for context in (pod_security, container_security):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == APP_USER_ID
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container_security["capabilities"]


def test_namespace_enforces_restricted() -> None:
    labels = base_resource("Namespace")["metadata"]["labels"]

    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_container_resources_set() -> None:
    resources = aggregator_container()["resources"]

    for section in ("requests", "limits"):
        assert set(resources[section]) >= {"cpu", "memory"}, f"resources.{section} lacks cpu or memory"


def test_prometheus_annotations_match_admin(pod_settings: Settings) -> None:
    annotations = base_resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod_settings.admin_listen is not None

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(pod_settings.admin_listen.port)
    assert annotations["prometheus.io/path"] == "/metrics"


# --- Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Parse the Dockerfile into (INSTRUCTION, arguments) pairs.

    Continuation lines are joined, and comment lines are dropped, also inside a
    continued instruction, as docker does. Parser directives and heredocs are not
    supported, and the Dockerfile uses neither.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue

        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue

        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""

    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_instructions() if instruction == keyword]


def exec_form(keyword: str) -> list[str]:
    """Return the JSON (exec form) arguments of the last instruction with this keyword."""
    values = dockerfile_values(keyword)
    assert values, f"the Dockerfile has no {keyword}"
    assert values[-1].startswith("["), f"{keyword} must use the exec form, so that SIGTERM reaches the aggregator"
    parsed: list[str] = json.loads(values[-1])
    return parsed


def test_dockerfile_base_image() -> None:
    bases = dockerfile_values("FROM")

    assert len(bases) == 1
    image, _, tag = bases[0].partition(":")
    assert image == "python"
    assert tag.startswith("3.11-slim"), f"expected a python:3.11-slim tag, got {bases[0]}"


def test_dockerfile_user_not_root() -> None:
    users = dockerfile_values("USER")

    assert users, "the Dockerfile has no USER, so the image runs as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"
    assert int(user) == APP_USER_ID
    assert int(user) == pod_spec()["securityContext"]["runAsUser"]
    assert group in ("", str(APP_USER_ID))


def test_dockerfile_exposes_ports() -> None:
    exposed = {port for arguments in dockerfile_values("EXPOSE") for port in arguments.split()}
    container_ports = {
        f"{port['containerPort']}/{port.get('protocol', 'TCP').lower()}" for port in aggregator_container()["ports"]
    }

    assert exposed == EXPECTED_EXPOSED_PORTS
    assert exposed == container_ports


def test_dockerfile_runs_aggregator_with_config() -> None:
    assert exec_form("ENTRYPOINT") == ["aggregator"]
    assert exec_form("CMD") == ["--config", CONFIG_PATH]


def test_dockerfile_environment_and_signal() -> None:
    environment = " ".join(dockerfile_values("ENV"))

    assert "PYTHONUNBUFFERED=1" in environment.split()
    assert dockerfile_values("STOPSIGNAL") == ["SIGTERM"]


def test_dockerfile_installs_package_with_fast_extra() -> None:
    runs = dockerfile_values("RUN")

    assert any("pip install --no-cache-dir '.[fast]'" in run for run in runs)
    for arguments in dockerfile_values("COPY"):
        *sources, _ = arguments.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not found in the build context"


# --- Grafana dashboard --------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as stream:
        dashboard: dict[str, Any] = json.load(stream)
    return dashboard


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Yield every panel, including those nested in collapsed rows."""
    for panel in load_dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    expressions = [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            expressions.append(variable["definition"])
    return expressions


def exported_name(series: str) -> str | None:
    """Return the exported metric that a series name belongs to, or None for an unknown name."""
    if series in EXPORTED_METRICS:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and EXPORTED_METRICS.get(base, ("", frozenset()))[0] == "histogram":
            return base
    return None


def test_dashboard_format() -> None:
    dashboard = load_dashboard()

    assert dashboard["schemaVersion"] == 39
    assert [entry["name"] for entry in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"


def test_dashboard_uses_datasource_input() -> None:
    panel_ids = []
    for panel in dashboard_panels():
        panel_ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", f"panel {panel['title']!r}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", f"panel {panel['title']!r}"

    assert len(panel_ids) == len(set(panel_ids)), "panel ids repeat"


def test_dashboard_metric_names_exported() -> None:
    for expression in dashboard_expressions():
        for series in METRIC_NAME.findall(expression):
            assert exported_name(series) is not None, f"{series} is not an exported metric: {expression}"


def test_dashboard_shows_every_metric() -> None:
    used = {exported_name(series) for expression in dashboard_expressions() for series in METRIC_NAME.findall(expression)}

    assert set(EXPORTED_METRICS) - used == set()


def test_dashboard_grouping_labels_exist() -> None:
    for expression in dashboard_expressions():
        metrics = {exported_name(series) for series in METRIC_NAME.findall(expression)}
        for clause in GROUPING_CLAUSE.findall(expression):
            for label in (item.strip() for item in clause.split(",")):
                for metric in metrics:
                    assert metric is not None
                    kind, labels = EXPORTED_METRICS[metric]
                    allowed = labels | TARGET_LABELS | ({"le"} if kind == "histogram" else set())
                    assert label in allowed, f"{metric} has no label {label!r}: {expression}"
