"""deploy/ tells the truth about zuulpush, checked offline (no cluster, no Docker daemon).

- Kubernetes manifests (deploy/kubernetes/) are validated against the API schemas bundled with
  kubernetes-validate, strictly (an unknown field is an error), for the oldest Kubernetes we aim at
  and the newest the validator knows; with `kubectl` at hand, the kustomization is rendered and
  validated whole, generated names included.
- Cross-checks: every `zuulpush` command line in a manifest, a systemd unit or the Dockerfile is
  parsed by the real argparse parser, and its settings (flags plus the environment the manifests
  and env files give it) build the real component configs; every `ZUULPUSH_*` name anywhere in
  deploy/ is a real setting; the edge's grace period and stop timeout outlast its drain; probes,
  Services, PodDisruptionBudgets and the autoscaler point at what exists.
- systemd units parse (and pass `systemd-analyze verify` and an exposure ceiling when it is
  installed); `haproxy -c` passes when HAProxy is installed; the Dockerfile copies files that
  exist and its entrypoint raises the open-files limit.
"""

from __future__ import annotations

import argparse
import configparser
import copy
import fnmatch
import functools
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from router.config import ApiConfig
from zuulpush.app import EdgeAppConfig, FleetAppConfig
from zuulpush.cli import build_parser
from zuulpush.config import ENV_PREFIX, known_keys, load_settings
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.shedding import derive_ceilings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
UNITS = sorted(SYSTEMD.glob("*.service"))

K8S_VERSIONS = ("1.30.0", latest_version())
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SAMPLE_SECRETS = {"ZUULPUSH_SECRET": "s" * 32, "ZUULPUSH_API_KEYS": "key-1,key-2",
                  "ZUULPUSH_ADMIN_KEY": "admin-key"}
"""Stand-ins for the secrets the example env files leave empty (the edge and the API refuse to
start without them)."""
DRAIN_MARGIN_S = 10.0
"""What a stop timeout needs beyond the drain: unregistering, closing Redis, a slow machine."""


# files

def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as kustomize and systemd read them."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value
    return pairs


@functools.cache
def _kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((KUBE / "kustomization.yaml").read_text()))


@functools.cache
def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every resource the kustomization lists (shared: copy before
    changing one)."""
    return [(name, doc) for name in _kustomization()["resources"]
            for doc in yaml.safe_load_all((KUBE / name).read_text()) if doc]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@functools.cache
def _generated() -> dict[tuple[str, str], dict[str, str]]:
    """The ConfigMaps and Secrets the kustomization generates, with their data; from a file's
    example when it has one (secrets.env is the operator's, made from secrets.env.example)."""
    kustomization = _kustomization()
    made: dict[tuple[str, str], dict[str, str]] = {}
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in kustomization.get(field, ()):
            data: dict[str, str] = {}
            for name in generator["envs"]:
                example = KUBE / f"{name}.example"
                data.update(_env_file(example if example.exists() else KUBE / name))
            made[(kind, generator["name"])] = data
    return made


# pods

def _workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] in WORKLOADS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _zuulpush_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container running the zuulpush image."""
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            if container["image"].split(":")[0] == "zuulpush":
                yield workload, container


def _container(component: str) -> dict[str, Any]:
    found = [c for w, c in _zuulpush_containers()
             if _pod_labels(w).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, component
    return found[0]


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom (generated ConfigMaps and
    Secrets), then env (literal values; fields from the downward API as sample values)."""
    made = _generated()
    env: dict[str, str] = {}
    for source in container.get("envFrom", ()):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source \
            else ("Secret", source["secretRef"])
        assert (kind, ref["name"]) in made, f"{kind} {ref['name']} is not generated"
        env.update(made[(kind, ref["name"])])
    for item in container.get("env", ()):
        env[item["name"]] = item.get("value", "sample-" + item["name"].lower().replace("_", "-"))
    return env


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


# the command line and settings

def _parse(argv: list[str]) -> argparse.Namespace:
    """The namespace zuulpush parses `argv` into; options spelled out in full (argparse also
    takes unambiguous prefixes, which a later option could make ambiguous)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"zuulpush refuses {shlex.join(argv)!r} (its usage error is above)")
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = commands._name_parser_map[args.command]._option_string_actions
    for arg in argv:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"{arg}: abbreviated or unknown option"
    return args


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """What the command would run with: its flags over the `ZUULPUSH_*` environment (secrets
    that an example leaves empty filled in)."""
    filled = {**env, **{k: v for k, v in SAMPLE_SECRETS.items() if not env.get(k)}}
    keys = known_keys()
    flags = {k: v for k, v in vars(args).items() if k in keys}
    return load_settings(None, flags, environ=filled)


def _check_command(args: argparse.Namespace, settings: Mapping[str, Any]) -> int | None:
    """The port the command listens on, once its component configs are built from these
    settings (values in range, keys known): the router's is its metrics port (None if unset)."""
    assert settings.get("redis_url"), f"zuulpush {args.command} without a Redis URL"
    if args.command == "edge":
        return EdgeAppConfig.from_settings(settings).edge.port
    if args.command == "api":
        return FleetAppConfig.from_settings(settings).api.api_port
    assert args.command == "router", f"zuulpush {args.command} is not a long-running role"
    port = FleetAppConfig.from_settings(settings).ops.metrics_port
    return port if port > 0 else None


def _edge_settings(argv: list[str], env: Mapping[str, str]) -> EdgeConfig:
    args = _parse(argv)
    settings = _settings(args, env)
    _check_command(args, settings)
    return EdgeAppConfig.from_settings(settings).edge


# Kubernetes: schemas

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name, doc", _manifests(),
                         ids=[f"{d['kind']}/{d['metadata']['name']}" for _, d in _manifests()])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_is_strict() -> None:
    edge = copy.deepcopy(_one("Deployment", "zuulpush-edge"))
    edge["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(edge, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kind, name", [("ConfigMap", "zuulpush-config"),
                                        ("Secret", "zuulpush-secrets")])
def test_generated_objects_are_valid(kind: str, name: str) -> None:
    data = _generated()[(kind, name)]
    doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
    if kind == "Secret":
        doc = {**doc, "data": {}, "stringData": data, "type": "Opaque"}
    kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_no_namespace() -> None:
    listed = set(_kustomization()["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    for name, doc in _manifests():
        assert "namespace" not in doc["metadata"], f"{name} names a namespace"
    assert "secrets.env" in (KUBE / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: the "
                    "kustomization is checked file by file only, not rendered")
def test_rendered_kustomization_is_valid(tmp_path: Path) -> None:
    work = tmp_path / "kubernetes"
    shutil.copytree(KUBE, work, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(work / "secrets.env.example", work / "secrets.env")
    done = subprocess.run(["kubectl", "kustomize", str(work)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for ref in _config_references(_pod_spec(doc)):
                assert ref in names, f"{doc['metadata']['name']} refers to missing {ref}"
            for container in _pod_spec(doc)["containers"]:
                assert ":" in container["image"], f"{container['image']} has no tag"


def _config_references(pod: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for container in pod["containers"]:
        for source in container.get("envFrom", ()):
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"]
            else:
                yield "Secret", source["secretRef"]["name"]
    for volume in pod.get("volumes", ()):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
    if "serviceAccountName" in pod:
        yield "ServiceAccount", pod["serviceAccountName"]


def test_every_reference_names_an_object() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for _, d in _manifests()} | set(_generated())
    for workload in _workloads():
        for ref in _config_references(_pod_spec(workload)):
            assert ref in names, f"{workload['metadata']['name']} refers to missing {ref}"
    images = {image["name"] for image in _kustomization()["images"]}
    for _, container in _zuulpush_containers():
        assert container["image"] in images, "the kustomization does not set the image"


# Kubernetes: the zuulpush containers

@pytest.mark.parametrize("workload, container", list(_zuulpush_containers()),
                         ids=[c["name"] for _, c in _zuulpush_containers()])
def test_container_command_line_runs(workload: dict[str, Any], container: dict[str, Any]) -> None:
    assert "command" not in container, "the image's entrypoint (ulimit, then zuulpush) is kept"
    env = _container_env(container)
    argv = [_expand(arg, env) for arg in container["args"]]
    assert not [a for a in argv if "$(" in a], f"unexpanded reference in {argv}"
    args = _parse(argv)
    listens = _check_command(args, _settings(args, env))
    ports = {_named_port(container, p["name"]) for p in container.get("ports", ())}
    assert ports == ({listens} if listens else set()), "containerPort is not the port it listens on"


def _edge_pod() -> tuple[dict[str, Any], dict[str, Any], EdgeConfig]:
    deployment = _one("Deployment", "zuulpush-edge")
    container = _container("edge")
    env = _container_env(container)
    return deployment, container, _edge_settings(
        [_expand(a, env) for a in container["args"]], env)


def _prestop_s(container: dict[str, Any]) -> float:
    """Seconds the preStop hook takes before SIGTERM: a `sleep N` (exec or the sleep action)."""
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", f"preStop runs {command}: its duration is unknown"
    return float(command[1])


def test_edge_grace_period_outlasts_its_drain() -> None:
    deployment, container, edge = _edge_pod()
    grace = _pod_spec(deployment)["terminationGracePeriodSeconds"]
    drain = _prestop_s(container) + edge.drain_window_s + edge.heartbeat_interval_s
    assert grace >= drain + DRAIN_MARGIN_S, (grace, drain)
    assert edge.drain_window_s == float(_container_env(container)["ZUULPUSH_DRAIN_WINDOW_S"])


def test_edge_readiness_is_healthz_on_its_port() -> None:
    _, container, edge = _edge_pod()
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert _named_port(container, probe["port"]) == edge.port


def test_edge_liveness_answers_any_http_and_outlasts_an_admin_drain() -> None:
    _, container, edge = _edge_pod()
    probe = container["livenessProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] > \
        edge.drain_window_s + edge.heartbeat_interval_s
    command = probe["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    compile(command[2], "livenessProbe", "exec")
    assert f'("127.0.0.1", {edge.port})' in command[2] and "/healthz" in command[2]


def test_edge_rolls_one_at_a_time_and_is_scaled_on_connections() -> None:
    deployment = _one("Deployment", "zuulpush-edge")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the edge's replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and "connections" in metric["pods"]["metric"]["name"]
    target = float(metric["pods"]["target"]["averageValue"])
    _, _, edge = _edge_pod()
    assert 0 < target < edge.max_connections, "the target leaves room under max_connections"


def test_edge_service_is_an_l4_load_balancer() -> None:
    service = _one("Service", "zuulpush-edge")["spec"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"
    assert {port["protocol"] for port in service["ports"]} == {"TCP"}


def _selected(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    return [w for w in _workloads()
            if selector.items() <= _pod_labels(w).items() and w["kind"] != "Job"]


@pytest.mark.parametrize("service", _of_kind("Service"), ids=lambda s: s["metadata"]["name"])
def test_service_selects_pods_and_their_ports(service: dict[str, Any]) -> None:
    (workload,) = _selected(service["spec"]["selector"])
    names = {p["name"] for c in _pod_spec(workload)["containers"] for p in c.get("ports", ())}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in names, f"no container port {port['targetPort']}"


def test_every_workload_has_one_disruption_budget() -> None:
    budgets = _of_kind("PodDisruptionBudget")
    covered = [w["metadata"]["name"] for b in budgets
               for w in _selected(b["spec"]["selector"]["matchLabels"])]
    assert len(covered) == len(budgets), "a budget selects no workload, or several"
    assert sorted(covered) == sorted(w["metadata"]["name"] for w in _workloads()
                                     if w["kind"] != "Job")


def test_redis_url_names_the_statefulset_pods() -> None:
    statefulset = _one("StatefulSet", "zuulpush-redis")
    service = _one("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    (redis,) = _pod_spec(statefulset)["containers"]
    url = _generated()[("ConfigMap", "zuulpush-config")]["ZUULPUSH_REDIS_URL"]
    scheme, _, hosts = url.partition("://")
    assert scheme == "redis+cluster"
    pods = {f"{statefulset['metadata']['name']}-{i}.{service['metadata']['name']}"
            for i in range(statefulset["spec"]["replicas"])}
    for hostport in hosts.split(","):
        host, _, port = hostport.partition(":")
        assert host in pods and int(port) == _named_port(redis, "redis"), hostport
    (init,) = _pod_spec(_one("Job", "zuulpush-redis-cluster-init"))["containers"]
    env = {item["name"]: item["value"] for item in init["env"]}
    assert env == {"REDIS_SERVICE": service["metadata"]["name"],
                   "REDIS_NODES": str(statefulset["spec"]["replicas"])}


FAKE_REDIS_CLI = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  *" ping") echo PONG ;;
  *"cluster info") printf 'cluster_state:%s\\r\\ncluster_slots_assigned:0\\r\\n' "$STATE" ;;
esac
"""
FAKE_GETENT = """#!/bin/sh
n=$(echo "$2" | sed 's/^[a-z-]*-\\([0-9]*\\)\\..*/\\1/')
echo "10.0.0.$n      $2"
echo "10.9.9.$n      $2"
"""


@pytest.mark.parametrize("state", ["fail", "ok"])
def test_redis_cluster_init_forms_the_cluster_once(tmp_path: Path, state: str) -> None:
    (init,) = _pod_spec(_one("Job", "zuulpush-redis-cluster-init"))["containers"]
    for name, text in (("redis-cli", FAKE_REDIS_CLI), ("getent", FAKE_GETENT)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {item["name"]: item["value"] for item in init["env"]}
    calls = tmp_path / "calls"
    subprocess.run([*init["command"], *init["args"]], check=True, capture_output=True,
                   timeout=30, env={**os.environ, **env, "CALLS": str(calls), "STATE": state,
                                    "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    creates = [c for c in calls.read_text().splitlines() if c.startswith("--cluster create")]
    if state == "ok":
        assert creates == [], "a formed cluster is left alone"
        return
    nodes = int(env["REDIS_NODES"])
    assert creates == [" ".join(["--cluster create", *(f"10.0.0.{i}:6379" for i in range(nodes)),
                                 "--cluster-replicas 1 --cluster-yes"])]


# systemd

def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), source=path.name)
    return parser


def _unit_argv(unit: configparser.RawConfigParser) -> list[str]:
    argv = shlex.split(unit["Service"]["ExecStart"].replace("%H", "host-1"))
    assert argv[0].endswith("/bin/zuulpush"), argv[0]
    return argv[1:]


def _unit_env() -> dict[str, str]:
    return _env_file(SYSTEMD / "zuulpush.env.example")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_zuulpush_safely(path: Path) -> None:
    unit = _unit(path)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] == "zuulpush" and service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"] == "/etc/zuulpush/zuulpush.env"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert int(service["LimitNOFILE"]) >= 65536
    args = _parse(_unit_argv(unit))
    _check_command(args, _settings(args, _unit_env()))
    expected = "always" if args.command == "edge" else "on-failure"
    assert service["Restart"] == expected, "a drained edge exits 0 and must come back"


def test_edge_unit_stop_timeout_outlasts_its_drain_and_states_its_ceilings() -> None:
    path = SYSTEMD / "zuulpush-edge.service"
    unit = _unit(path)
    edge = _edge_settings(_unit_argv(unit), _unit_env())
    timeout = float(unit["Service"]["TimeoutStopSec"])
    assert timeout >= edge.drain_window_s + edge.heartbeat_interval_s + DRAIN_MARGIN_S
    soft, hard = derive_ceilings(int(unit["Service"]["LimitNOFILE"]), 0, 0)
    text = path.read_text()
    assert f"{hard:,} sockets" in text and f"{soft:,} connections" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed: units are parsed only")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze(path: Path, tmp_path: Path) -> None:
    copy_ = tmp_path / path.name  # ExecStart must name an executable that exists here
    copy_.write_text(path.read_text().replace("/opt/zuulpush/bin/zuulpush", sys.executable))
    for verb in (["verify", "--man=no"], ["security", "--offline=yes", "--threshold=20"]):
        done = subprocess.run(["systemd-analyze", *verb, str(copy_)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr


# HAProxy

def _haproxy_sections() -> dict[str, list[str]]:
    """'backend edges' -> its directive lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed: the "
                    "config is checked by reading it only (scripts/test installs haproxy)")
def test_haproxy_config_is_valid() -> None:
    done = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_balances_edges_at_l4_on_their_health() -> None:
    sections = _haproxy_sections()
    edges = sections["backend edges"]
    for line in ("mode tcp", "balance leastconn", "option httpchk", "http-check expect status 200"):
        assert line in edges, line
    assert any(re.search(r"^http-check send .*uri /healthz\b", line) for line in edges)
    assert not [line for lines in sections.values() for line in lines
                if "shutdown-sessions" in line or "send-proxy" in line], \
        "a drain closes its own connections; the edge does not read the PROXY protocol"
    servers = [line.split()[2] for line in edges if line.startswith("server ")]
    assert servers and {s.rsplit(":", 1)[1] for s in servers} == {str(EdgeConfig().port)}
    api = [line.split()[2] for line in sections["backend api"] if line.startswith("server ")]
    assert api and {s.rsplit(":", 1)[1] for s in api} == {str(ApiConfig().api_port)}


def test_haproxy_keeps_idle_connections_past_a_heartbeat() -> None:
    defaults = {}
    for line in _haproxy_sections()["defaults"]:
        if line.startswith("timeout "):
            _, name, value = line.split()
            defaults[name] = value
    heartbeat_s = EdgeConfig().heartbeat_interval_s
    for name in ("client", "server", "tunnel"):
        assert _seconds(defaults[name]) >= 2 * heartbeat_s, name


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    number, unit = match.groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(unit, 0.001)


# Docker

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    start = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[start:]


def test_dockerfile_builds_from_files_that_exist() -> None:
    instructions = _dockerfile()
    assert {args.split()[0] for word, args in instructions if word == "FROM"} == \
        {"python:3.11-slim"}
    for word, args in instructions:
        if word == "COPY" and "--from=" not in args:
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"


def test_dockerfile_runs_zuulpush_unprivileged_on_its_ports() -> None:
    final = dict(_final_stage())
    assert final["USER"].split(":")[0] not in ("root", "0")
    assert {int(p) for p in final["EXPOSE"].split()} == {EdgeConfig().port, ApiConfig().api_port}
    (entrypoint,) = json.loads(final["ENTRYPOINT"])
    copied = [a for w, a in _final_stage() if w == "COPY" and a.split()[-1].endswith(entrypoint)]
    assert copied, f"ENTRYPOINT {entrypoint} is not copied into the image"
    assert _parse(json.loads(final["CMD"])).command == "serve"
    env = {}
    for pair in final["ENV"].split():
        key, _, value = pair.partition("=")
        env[key] = value
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= _env_names()
    load_settings(None, environ=env)


def test_docker_context_keeps_what_the_image_copies() -> None:
    patterns = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    sources = [a for w, args in _dockerfile() if w == "COPY" and "--from=" not in args
               for a in [s for s in shlex.split(args) if not s.startswith("--")][:-1]]
    for source in sources:
        assert not _docker_ignores(patterns, source), source
    for kept_out in (".venv", ".git", "tests", "zuulpush/__pycache__"):
        assert _docker_ignores(patterns, kept_out), kept_out


def _docker_ignores(patterns: list[str], path: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/").replace("**/", "*/")
        if any(fnmatch.fnmatchcase(c, glob) or fnmatch.fnmatchcase(c, glob.removeprefix("*/"))
               for c in candidates):
            ignored = not keep
    return ignored


def test_entrypoint_raises_the_open_files_limit_then_runs_zuulpush(tmp_path: Path) -> None:
    fake = tmp_path / "zuulpush"
    fake.write_text('#!/bin/sh\necho "$(ulimit -S -n) $(ulimit -H -n) $*"\n')
    fake.chmod(0o755)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    done = subprocess.run(["/bin/sh", str(DOCKER / "entrypoint.sh"), "edge", "--node-id", "a b"],
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                          preexec_fn=lower, capture_output=True, text=True, timeout=30,
                          check=True)
    soft, hard_seen, *argv = done.stdout.split()
    assert soft == hard_seen == str(hard) and argv == ["edge", "--node-id", "a", "b"]


# every file

def _env_names() -> set[str]:
    return {ENV_PREFIX + key.upper() for key in known_keys()}


def _deploy_files() -> list[Path]:
    """Ours: everything in deploy/ except deploy/local/ (the local fleet, checked elsewhere)."""
    local = DEPLOY / "local"
    return sorted(p for p in DEPLOY.rglob("*")
                  if p.is_file() and local not in p.parents and p.name != "secrets.env")


def test_every_zuulpush_variable_named_in_deploy_is_a_setting() -> None:
    for path in _deploy_files():
        named = set(re.findall(r"\bZUULPUSH_[A-Z0-9_]+", path.read_text()))
        unknown = named - _env_names()
        assert not unknown, f"{path.relative_to(ROOT)}: {sorted(unknown)} are no settings"


def test_env_files_hold_only_settings() -> None:
    for path in (KUBE / "config.env", KUBE / "secrets.env.example",
                 SYSTEMD / "zuulpush.env.example"):
        env = _env_file(path)
        assert set(env) <= _env_names(), path.name
        load_settings(None, environ=env)  # every value has its setting's type


def test_deploy_readme_covers_every_file_and_the_readme_points_to_it() -> None:
    guide = (DEPLOY / "README.md").read_text()
    for path in _deploy_files():
        if path.name not in ("README.md", ".gitignore"):
            assert str(path.relative_to(DEPLOY)) in guide, f"deploy/README.md skips {path.name}"
    assert "deploy/README.md" in (ROOT / "README.md").read_text()
