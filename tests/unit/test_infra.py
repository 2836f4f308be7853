"""The deployment files under infra/, validated without running them.

Nothing here builds an image, starts a container or talks to a cluster. Each file is parsed, checked against the
schema its tool uses where one is available offline (the compose-spec schema vendored by check-jsonschema, the
Kubernetes OpenAPI schemas bundled by kubernetes-validate, Prefect's own prefect.yaml model), and checked against
the code it deploys: commands are ragops CLI commands, RAGOPS_* variables are fields of ``Settings``, flow
entrypoints exist, ports, probes, volumes and secrets agree across files.
"""

from __future__ import annotations

import ast
import fnmatch
import ipaddress
import json
import os
import re
import shlex
import tomllib
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from evaluation.settings import EvalSettings, MonitorSettings
from flows.settings import Settings
from pipelines.env import OFFLINE_ENV
from pipelines.settings import QdrantSettings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
K8S = INFRA / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
QDRANT_VALUES = K8S / "qdrant-values.yaml"
PREFECT_FILE = INFRA / "prefect" / "prefect.yaml"
QDRANT_CONFIG = INFRA / "qdrant" / "config.yaml"
POSTGRES_INIT = COMPOSE_DIR / "postgres-init.sql"
NGINX_CONF = INFRA / "proxy" / "nginx.conf"
PROMETHEUS_CONFIG = INFRA / "prometheus" / "prometheus.yml"

KUBERNETES_VERSION = "1.30"
"""The oldest Kubernetes release the manifests must be valid for (kubernetes-validate picks its schema)."""

RAGOPS_IMAGE_DOCKERFILE = "infra/docker/Dockerfile"

RAGOPS_COMMANDS: dict[tuple[str, ...], dict[str, int]] = {
    ("server", "prefect"): {"--port": 4200},
    ("server", "mlflow"): {"--port": 5000},
    ("server", "worker"): {},
    ("server", "api"): {"--port": 8000},
    ("serve",): {"--port": 8000},
    ("up",): {"--api-port": 8000, "--prefect-port": 4200, "--mlflow-port": 5000},
}
"""The process commands of the ragops CLI: subcommand -> the options it takes, with their defaults (all ports)."""

SERVER_COMMANDS = {("server", "prefect"), ("server", "mlflow"), ("server", "worker"), ("server", "api")}
"""A multi-process deployment runs each of these exactly once (as a service or a Deployment)."""

INDEX_FREE_COMMANDS = {("server", "prefect"), ("server", "mlflow")}
"""Processes that never open the vector index; every other ragops process must be given a Qdrant server."""

DASK_COMMANDS = {"scheduler", "worker"}
"""The Dask processes a deployment runs from the ragops image (``dask scheduler``, ``dask worker``), once each."""


EXPECTED_DEPLOYMENTS: dict[str, tuple[str, str | None]] = {
    "flows/ingest.py:ingest_flow": ("hourly", "hourly"),
    "flows/evaluate.py:evaluate_flow": ("nightly-champion", "daily"),
    "flows/retrain.py:retrain_flow": ("weekly", "weekly"),
    "flows/monitor.py:monitor_flow": ("every-15-min", "every-15-min"),
    "flows/evaluate.py:promote_flow": ("manual", None),
    "flows/evaluate.py:rollback_flow": ("manual", None),
}
"""prefect.yaml: entrypoint -> (deployment name, schedule cadence or None for manual runs)."""

SECRET_NAME = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN")
"""Variable names whose values are secrets: never a literal in a committed file."""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "RAGOPS_") -> set[str]:
    """Every environment variable ``model`` reads: ``RAGOPS_<FIELD>`` and ``RAGOPS_<GROUP>__<FIELD>``, recursively."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        key = prefix + name.upper()
        nested = _model_in(field.annotation)
        if nested is None:
            names.add(key)
        else:
            names |= settings_env_names(nested, key + "__")
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def assert_known_settings(names: set[str], where: str) -> None:
    unknown = {n for n in names if n.startswith("RAGOPS_")} - settings_env_names()
    assert not unknown, f"{where}: RAGOPS_* variables that are not fields of pipelines.settings.Settings: {unknown}"


def parse_ragops_command(argv: list[Any], where: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """``argv`` as one of :data:`RAGOPS_COMMANDS`, with every option resolved (given or default)."""
    args = [str(a) for a in argv]
    assert args and args[0] == "ragops", f"{where}: command {args} is not a ragops command"
    for sub, options in RAGOPS_COMMANDS.items():
        if tuple(args[1 : 1 + len(sub)]) != sub:
            continue
        rest = args[1 + len(sub) :]
        values = dict(options)
        assert len(rest) % 2 == 0, f"{where}: `{' '.join(args)}`: options must be `--name value` pairs"
        for option, value in zip(rest[::2], rest[1::2], strict=True):
            assert option in options, f"{where}: `ragops {' '.join(sub)}` has no option {option}"
            assert value.isdigit(), f"{where}: {option} {value} is not a port"
            values[option] = int(value)
        return sub, values
    raise AssertionError(f"{where}: `{' '.join(args)}` is none of the ragops commands {sorted(RAGOPS_COMMANDS)}")


def parse_dask_command(argv: list[Any], where: str) -> tuple[str, dict[str, Any]]:
    """``dask <sub> ...`` parsed by the installed ``distributed``'s own click command (what the image runs): unknown
    options, missing arguments and bad values fail here as they would at start-up. Returns (sub, parameters)."""
    import click

    args = [str(a) for a in argv]
    assert args[:1] == ["dask"] and len(args) >= 2, f"{where}: command {args} is not a dask command"
    commands = {ep.name: ep for ep in entry_points(group="dask_cli")}
    assert args[1] in commands, f"{where}: `dask {args[1]}` is none of the installed commands {sorted(commands)}"
    command = commands[args[1]].load()
    try:
        context = command.make_context(f"dask {args[1]}", args[2:])
    except click.UsageError as error:
        raise AssertionError(f"{where}: `{' '.join(args)}`: {error.format_message()}") from None
    return args[1], dict(context.params)


def address_port(address: str) -> int:
    """The port of a Dask listen address (``:8787``, ``0.0.0.0:8787``, ``tcp://host:8786``)."""
    port = urlsplit(address if "://" in address else f"tcp://{address}").port
    assert port is not None, f"no port in {address!r}"
    return port


def cron_cadence(cron: str) -> str:
    """``hourly``, ``daily`` or ``weekly`` for the simple cron shapes the deployments use; ``other`` otherwise."""
    fields = cron.split()
    assert len(fields) == 5, f"cron {cron!r} does not have 5 fields"
    minute, hour, dom, month, dow = fields
    fixed = re.compile(r"^\d+$")
    if fixed.match(minute) and hour == dom == month == dow == "*":
        return "hourly"
    if re.match(r"^\*/\d+$", minute) and hour == dom == month == dow == "*":
        return f"every-{minute[2:]}-min"
    if fixed.match(minute) and fixed.match(hour) and dom == month == "*":
        if dow == "*":
            return "daily"
        if re.match(r"^([0-7]|MON|TUE|WED|THU|FRI|SAT|SUN)$", dow, re.IGNORECASE):
            return "weekly"
    return "other"


def pyproject_pin(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name, sep, version = dep.partition("==")
        if sep and re.sub(r"\[.*\]", "", name).strip().lower() == package:
            return version.strip()
    raise AssertionError(f"pyproject.toml does not pin {package} exactly")


# --- compose ---------------------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` against ``env``.

    A required variable that ``env`` leaves unset becomes ``<NAME>``: these tests look at structure, not secrets.
    """

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            return current if current else f"<{name}>"
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose_variables(text: str) -> dict[str, str | None]:
    """Variables the compose file interpolates -> the operator (``:-``, ``:?``, ...) they are used with."""
    return {m["name"]: m["op"] for m in _VARIABLE.finditer(text)}


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {raw!r} is not KEY=VALUE"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def image_services() -> dict[str, dict[str, Any]]:
    """Services running the image built from infra/docker/Dockerfile (ragops processes and Dask)."""
    return {
        name: svc
        for name, svc in services().items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == RAGOPS_IMAGE_DOCKERFILE
    }


def ragops_services() -> dict[str, dict[str, Any]]:
    """Services of the ragops image running a ragops command."""
    return {name: svc for name, svc in image_services().items() if str(svc["command"][0]) == "ragops"}


def dask_services() -> dict[str, dict[str, Any]]:
    """Services of the ragops image running a dask command, by subcommand (``scheduler``, ``worker``)."""
    found: dict[str, dict[str, Any]] = {}
    for name, svc in image_services().items():
        if str(svc["command"][0]) == "dask":
            sub, _ = parse_dask_command(svc["command"], f"compose service {name}")
            assert sub not in found, f"two compose services run `dask {sub}`"
            found[sub] = {"name": name, **svc}
    return found


def qdrant_services() -> dict[str, dict[str, Any]]:
    """The Qdrant cluster's nodes: services running the qdrant/qdrant image."""
    return {n: s for n, s in services().items() if str(s.get("image", "")).startswith("qdrant/qdrant:")}


def volume_mounts(svc: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path, variables at their defaults) of a service's volumes."""
    mounts = {}
    for volume in svc.get("volumes", []):
        spec = interpolate(volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}", {})
        source, target = spec.split(":")[:2]
        mounts[target] = source
    return mounts


def replicas(svc: Mapping[str, Any]) -> int:
    """The service's replica count with the compose defaults (1 without ``deploy.replicas``)."""
    return int(interpolate(str(svc.get("deploy", {}).get("replicas", 1)), {}))


def service_env(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(svc: Mapping[str, Any], env: Mapping[str, str]) -> Iterator[tuple[str, str, int]]:
    """(host IP, host port, container port) of each published port, with variables resolved against ``env``."""
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            yield interpolate(str(port.get("host_ip", "")), env), str(port.get("published", "")), int(port["target"])
            continue
        spec = interpolate(str(port), env).split("/")[0]
        parts = spec.rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else ""
        host_port = parts[-2] if len(parts) >= 2 else ""
        yield host_ip, host_port, int(parts[-1])


def healthcheck_command(svc: Mapping[str, Any]) -> str:
    test = svc["healthcheck"]["test"]
    return " ".join(str(t) for t in test) if isinstance(test, list) else str(test)


# --- Dockerfile ------------------------------------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped (also inside continuations)."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            instruction, _, arguments = current.strip().partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued instruction"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            for token in shlex.split(arguments):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {arguments!r}: use the KEY=value form"
                env[key] = value
    return env


def exec_form(arguments: str, instruction: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), f"{instruction} must use the exec (JSON array) form"
    return [str(p) for p in parsed]


# --- Kubernetes ------------------------------------------------------------------------------------------------------

NOT_MANIFESTS = {KUSTOMIZATION.name, QDRANT_VALUES.name}
CLUSTER_SCOPED = {"Namespace", "StorageClass"}
ENCRYPTED_CLASS = "ragops-encrypted"


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def manifest_files() -> list[Path]:
    return [p for p in k8s_files() if p.name not in NOT_MANIFESTS]


@cache
def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every Kubernetes object under infra/k8s/ (the secret example included)."""
    documents = []
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") == kind]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in k8s_objects(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]


def containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def container_command(container: Mapping[str, Any]) -> list[str]:
    return [str(a) for a in list(container.get("command", [])) + list(container.get("args", []))]


def is_dask(container: Mapping[str, Any]) -> bool:
    return container_command(container)[:1] == ["dask"]


def dask_containers() -> dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """``dask <sub>`` -> (workload, container, parsed parameters), for every Dask container of the manifests."""
    found: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
    for workload in workloads():
        for container in containers(workload):
            if is_dask(container):
                sub, params = parse_dask_command(container_command(container), workload["metadata"]["name"])
                assert sub not in found, f"two workloads run `dask {sub}`"
                found[sub] = (workload, container, params)
    return found


def config_map_data() -> dict[str, str]:
    return {str(k): str(v) for k, v in k8s_object("ConfigMap", "ragops-config")["data"].items()}


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as far as the manifests define it (ConfigMap values; secrets as ``<secret>``)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"]) if "value" in item else "<secret>"
    return env


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- Prefect ---------------------------------------------------------------------------------------------------------


@cache
def prefect_project() -> dict[str, Any]:
    loaded = yaml.safe_load(PREFECT_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def prefect_deployments() -> dict[str, dict[str, Any]]:
    return {d["entrypoint"]: d for d in prefect_project()["deployments"]}


def flow_function(path: Path, function: str) -> ast.FunctionDef:
    """The module-level ``def function`` in ``path``, decorated with Prefect's ``flow`` (read with ``ast``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            assert any(_is_flow_decorator(d) for d in node.decorator_list), f"{path.name}:{function} is not a @flow"
            assert isinstance(node, ast.FunctionDef), f"{path.name}:{function} is async"
            return node
    raise AssertionError(f"{path.relative_to(REPO)} defines no module-level function {function}")


def _is_flow_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "flow") or (
        isinstance(target, ast.Attribute) and target.attr == "flow"
    )


def flow_name(function: ast.FunctionDef) -> str:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and _is_flow_decorator(decorator):
            for keyword in decorator.keywords:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    return function.name.replace("_", "-")


def function_parameters(function: ast.FunctionDef) -> tuple[set[str], set[str]]:
    """(all parameter names, names without a default)."""
    args = function.args
    positional = args.posonlyargs + args.args
    required = {a.arg for a in positional[: len(positional) - len(args.defaults)]}
    required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
    return {a.arg for a in positional + args.kwonlyargs}, required


def module_constant(path: Path, name: str) -> Any:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.relative_to(REPO)} has no module-level {name}")


# ---------------------------------------------------------------------------------------------------------------------
# Every file


def infra_yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", infra_yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    assert all(isinstance(d, dict) for d in documents), f"{path}: every document must be a mapping"


def test_the_readme_names_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.name not in ("README.md", ".gitignore")]
    missing = [str(p.relative_to(INFRA)) for p in files if str(p.relative_to(INFRA)) not in readme]
    assert not missing, f"infra/README.md does not mention {missing}"


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.md")), ids=lambda p: str(p.relative_to(INFRA)))
def test_docs_name_only_real_settings(path: Path) -> None:
    """Every ``RAGOPS_*`` variable the infra docs tell operators to set is a field of ``Settings`` (a name ending in
    ``__`` is a group: some field must be in it). Variables a stack names for its secrets (``api_key_env``) are the
    operator's own names."""
    text = path.read_text()
    names = settings_env_names() | set(re.findall(r'api_key_env"?\s*[:=]\s*"(RAGOPS_\w+)"', text))
    unknown = set()
    for token in re.findall(r"RAGOPS_[A-Z0-9_]*[A-Z0-9_]", text):
        if token.endswith("__"):
            if not any(n.startswith(token) for n in names):
                unknown.add(token)
        elif token not in names:
            unknown.add(token)
    assert not unknown, f"{path.relative_to(REPO)} names variables ragops does not read: {sorted(unknown)}"


def test_settings_env_names_cover_nested_groups() -> None:
    names = settings_env_names()
    assert {"RAGOPS_HOME", "RAGOPS_QDRANT__URL", "RAGOPS_EVAL__JUDGE__BASE_URL", "RAGOPS_SERVICE__PORT"} <= names
    assert "RAGOPS_QDRANT" not in names and "RAGOPS_EVAL__JUDGE" not in names


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_base_is_python_311_slim() -> None:
    args = {}
    for instruction, arguments in dockerfile():
        if instruction == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
        if instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), arguments.split()[0])
            assert image.startswith("python:3.11-slim"), f"FROM {image}: expected python:3.11-slim"


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    runs = [arguments for instruction, arguments in dockerfile() if instruction == "RUN"]
    torch_pin = f"torch=={pyproject_pin('torch')}"
    torch_at = [i for i, r in enumerate(runs) if torch_pin in r.split()]
    project_at = [i for i, r in enumerate(runs) if re.search(r"pip install (?:\S+ )*\.(?:\s|$)", r)]
    assert torch_at, f"no RUN installs {torch_pin} (the pin in pyproject.toml)"
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at[0]], "torch must come from the CPU index"
    assert project_at, "no RUN installs the project (pip install .)"
    assert torch_at[0] < project_at[0], "torch must be installed before the project, or pip pulls the CUDA build"
    uninstall_at = [i for i, r in enumerate(runs) if re.search(r"pip uninstall (?:\S+ )*torchvision", r)]
    assert uninstall_at and uninstall_at[0] >= project_at[0], "torchvision must be removed after the project install"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for instruction, arguments in dockerfile():
        tokens = arguments.split()
        if instruction not in ("COPY", "ADD") or any(t.startswith("--from") for t in tokens):
            continue
        sources = [t for t in tokens if not t.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context (the repository root)"
            assert source not in ignored, f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    assert {".venv", ".ragops", ".git"} <= ignored, "the build context must not ship the venv, state or history"


def test_dockerfile_runs_as_a_non_root_user_with_state_in_a_volume() -> None:
    stage = final_stage()
    users = [arguments for instruction, arguments in stage if instruction == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    env = dockerfile_env(stage)
    assert env.get("RAGOPS_HOME") == "/data"
    volumes = [a for instruction, a in stage if instruction == "VOLUME"]
    assert any("/data" in v for v in volumes), "RAGOPS_HOME (/data) must be a VOLUME"


def test_dockerfile_sets_the_offline_environment() -> None:
    env = dockerfile_env(final_stage())
    wrong = {k: env.get(k) for k, v in OFFLINE_ENV.items() if env.get(k) != v}
    assert not wrong, f"the image's ENV must match pipelines.env.OFFLINE_ENV; differs: {wrong}"
    assert_known_settings(set(env), "Dockerfile ENV")


def test_dockerfile_default_command_is_the_query_service_with_a_healthcheck() -> None:
    stage = final_stage()
    cmd = [exec_form(a, "CMD") for i, a in stage if i == "CMD"]
    entrypoint = [exec_form(a, "ENTRYPOINT") for i, a in stage if i == "ENTRYPOINT"]
    assert cmd, "no CMD"
    assert not entrypoint or entrypoint[-1][0] == "tini", "ENTRYPOINT may only be an init (tini), not the program"
    sub, options = parse_ragops_command(cmd[-1], "Dockerfile CMD")
    assert sub == ("server", "api")
    env = dockerfile_env(stage)
    port = options.get("--port") if "--port" in cmd[-1] else int(env.get("RAGOPS_SERVICE__PORT", "8000"))
    healthchecks = [a for i, a in stage if i == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1], "HEALTHCHECK must ask GET /healthz"
    exposed = {int(p.split("/")[0]) for i, a in stage if i == "EXPOSE" for p in a.split()}
    assert port in exposed, f"the service listens on {port} but the image exposes {exposed}"


# ---------------------------------------------------------------------------------------------------------------------
# docker compose


def test_compose_matches_the_compose_spec_schema() -> None:
    try:
        text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (dev extra) is not installed: it ships the compose-spec JSON schema")
    import jsonschema

    schema = json.loads(text)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "docker-compose.yml does not match the compose spec:\n" + "\n".join(errors)


def test_compose_services_have_an_image_and_a_healthcheck() -> None:
    assert set(services()) == {
        *("qdrant", "qdrant-2", "qdrant-3", "postgres", "redis", "dask-scheduler", "dask-worker"),
        *("prefect", "mlflow", "worker", "api", "proxy", "prometheus", "grafana"),
    }
    for name, svc in services().items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    for name, svc in services().items():
        if "image" in svc and "build" not in svc:
            assert interpolate(svc["image"], {}).split(":")[-1] not in ("", "latest"), f"{name}: pin the image tag"


def test_compose_ragops_services_build_the_ragops_image() -> None:
    assert set(image_services()) == set(ragops_services()) | {s["name"] for s in dask_services().values()}, (
        "every service of the ragops image runs a ragops or a dask command"
    )
    for name, svc in image_services().items():
        context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
        assert context == REPO, f"{name}: the build context must be the repository root"
        assert (context / svc["build"]["dockerfile"]).is_file()


def test_compose_ragops_commands_are_cli_commands() -> None:
    used = []
    for name, svc in ragops_services().items():
        sub, options = parse_ragops_command(svc["command"], f"compose service {name}")
        used.append(sub)
        port = options.get("--port")
        container_ports = {target for _, _, target in published_ports(svc, {})}
        if container_ports:
            assert container_ports == {port}, f"{name}: publishes {container_ports} but listens on {port}"
        check = healthcheck_command(svc)
        checked = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", check)}
        expected = int(service_env(svc)["PREFECT_RUNNER_SERVER_PORT"]) if port is None else port
        assert checked == {expected}, f"{name}: the healthcheck asks port {checked}, the process listens on {expected}"
    assert sorted(used) == sorted(SERVER_COMMANDS), f"each `ragops server` command once, got {used}"


def test_compose_healthchecks_ask_the_right_endpoints() -> None:
    paths = {("server", "api"): "/healthz", ("server", "prefect"): "/api/health", ("server", "mlflow"): "/health"}
    paths[("server", "worker")] = "/health"
    for name, svc in ragops_services().items():
        sub, _ = parse_ragops_command(svc["command"], name)
        assert re.search(rf":\d+{re.escape(paths[sub])}'", healthcheck_command(svc)), f"{name}: expected {paths[sub]}"
    for name in qdrant_services():
        assert "/readyz" in healthcheck_command(services()[name]), name
    assert "pg_isready" in healthcheck_command(services()["postgres"])
    assert healthcheck_command(services()["redis"]).endswith("redis-cli ping")
    assert "REDISCLI_AUTH" in service_env(services()["redis"]), "redis-cli ping needs the password"
    for sub, svc in dask_services().items():
        _, params = parse_dask_command(svc["command"], svc["name"])
        port = address_port(params["dashboard_address"])
        assert re.search(rf"127\.0\.0\.1:{port}/health'", healthcheck_command(svc)), f"dask {sub}: ask :{port}/health"
    assert "/proxy-health" in healthcheck_command(services()["proxy"])


@pytest.mark.parametrize("source", ["compose defaults", ".env.example"])
def test_compose_publishes_ports_on_loopback_only(source: str) -> None:
    env = {} if source == "compose defaults" else read_env_file(ENV_EXAMPLE)
    for name, svc in services().items():
        for host_ip, _, target in published_ports(svc, env):
            assert host_ip, f"{name}: port {target} is published on every interface (no host IP)"
            assert ipaddress.ip_address(host_ip.strip("[]")).is_loopback, f"{name}: port {target} bound to {host_ip}"


def test_compose_depends_on_healthy_services() -> None:
    expected = {
        "qdrant-2": {"qdrant"},
        "qdrant-3": {"qdrant"},
        "dask-worker": {"dask-scheduler"},
        "prefect": {"postgres"},
        "mlflow": {"postgres"},
        "worker": {"qdrant", "postgres", "prefect", "mlflow", "dask-scheduler"},
        "api": {"qdrant", "postgres", "redis", "mlflow"},
        "proxy": {"api"},
        "prometheus": {"api"},
        "grafana": {"prometheus"},
    }
    for name, svc in services().items():
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with a condition"
        assert set(depends) == expected.get(name, set()), f"{name}: depends on {set(depends)}"
        for target, spec in depends.items():
            assert spec.get("condition") == "service_healthy", f"{name} -> {target}: condition must be service_healthy"
            assert services()[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"


def test_compose_env_names_are_settings() -> None:
    for name, svc in services().items():
        assert_known_settings(set(service_env(svc)), f"compose service {name}")
    assert_known_settings(set(read_env_file(ENV_EXAMPLE)), ".env.example")


def test_compose_ragops_processes_use_the_qdrant_server() -> None:
    """The embedded Qdrant store opens in one process only: every process that reads the index needs a server."""
    for name, svc in ragops_services().items():
        sub, _ = parse_ragops_command(svc["command"], name)
        env = service_env(svc)
        if sub in INDEX_FREE_COMMANDS:
            assert "RAGOPS_QDRANT__API_KEY" not in env, f"{name} does not need the Qdrant key"
            continue
        assert urlsplit(env.get("RAGOPS_QDRANT__URL", "")).hostname == "qdrant", f"{name}: RAGOPS_QDRANT__URL unset"
        assert "RAGOPS_QDRANT__API_KEY" in env, f"{name}: Qdrant needs its API key"


def test_compose_mlflow_accepts_the_host_name_clients_use() -> None:
    allowed = service_env(services()["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name, svc in ragops_services().items():
        uri = service_env(svc).get("RAGOPS_MLFLOW__TRACKING_URI")
        if uri:
            netloc = urlsplit(uri).netloc
            assert any(fnmatch.fnmatch(netloc, a) for a in allowed), f"{name}: MLflow would refuse Host {netloc}"
    assert service_env(services()["mlflow"]).get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false"


def test_compose_secrets_come_from_required_variables() -> None:
    text = COMPOSE_FILE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    for name, svc in services().items():
        for key, value in service_env(svc).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}: {key} must be ${{VAR:?...}}, not {value!r}"
    for variable, op in compose_variables(text).items():
        assert variable in example, f"${{{variable}}} is not documented in .env.example"
        if op in (":?", "?") or SECRET_NAME.search(variable):
            assert example[variable] == "", f".env.example must leave the secret {variable} empty"
    stale = set(example) - set(compose_variables(text))
    assert not stale, f".env.example documents variables docker-compose.yml does not use: {stale}"
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split(), "infra/compose/.env must be git-ignored"


def test_compose_volumes_are_declared_or_shipped() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            spec = volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
            source = interpolate(spec, {}).split(":")[0]
            if source.startswith((".", "/")):
                if Path(source).suffix:
                    assert (COMPOSE_DIR / source).is_file(), f"{name}: bind-mounted {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_compose_dask_workers_point_at_the_scheduler() -> None:
    """The ingest flow partitions on the compose Dask cluster: the worker's address is the scheduler's service and
    port, every Dask worker connects there, and sees the source files at the paths the flow sends."""
    dask = dask_services()
    assert set(dask) == DASK_COMMANDS, f"compose runs dask {sorted(dask)}, expected {sorted(DASK_COMMANDS)}"
    scheduler, worker = dask["scheduler"], dask["worker"]
    _, scheduler_params = parse_dask_command(scheduler["command"], scheduler["name"])
    _, worker_params = parse_dask_command(worker["command"], worker["name"])
    address = f"tcp://{scheduler['name']}:{scheduler_params['port']}"
    assert worker_params["scheduler"] == address, f"dask workers connect to {worker_params['scheduler']}"
    assert worker_params["nthreads"] == 1, "partitioning holds the GIL: one thread per worker process"
    assert replicas(worker) >= 2, "a Dask cluster of one worker partitions no faster than the flow's threads"
    (prefect_worker,) = [s for s in ragops_services().values() if s["command"][1:3] == ["server", "worker"]]
    env = service_env(prefect_worker)
    assert env["RAGOPS_INGEST__DASK_ADDRESS"] == address, "the ingest flow must use the compose scheduler"
    sources = json.loads(env["RAGOPS_INGEST__SOURCES"])
    worker_mounts, flow_mounts = volume_mounts(worker), volume_mounts(prefect_worker)
    for source in sources:
        assert source in flow_mounts, f"the worker does not mount its source {source}"
        assert worker_mounts.get(source) == flow_mounts[source], f"Dask workers must see {source} as the flow does"
    dask_env = service_env(worker)
    assert dask_env["PREFECT_API_URL"] == env["RAGOPS_PREFECT__API_URL"], "tasks report to the flow's Prefect server"
    assert not list(published_ports(scheduler, {})), "the scheduler (no authentication) is not published"


def test_compose_api_replicas_sit_behind_the_proxy() -> None:
    """N api replicas, none published; the proxy publishes API_PORT and forwards to every replica of `api`."""
    api = services()["api"]
    proxy = services()["proxy"]
    assert replicas(api) >= 2, "the api runs replicated (API_REPLICAS)"
    assert not list(published_ports(api, {})), "replicas cannot share a host port: only the proxy is published"
    _, options = parse_ragops_command(api["command"], "api")
    conf = NGINX_CONF.read_text()
    listen = {int(p) for p in re.findall(r"^\s*listen\s+(\d+)", conf, re.MULTILINE)}
    ((host_ip, host_port, target),) = list(published_ports(proxy, {}))
    assert listen == {target}, f"nginx listens on {listen}, compose publishes container port {target}"
    assert host_port == "8000", "the query service keeps its usual host port (API_PORT)"
    upstreams = re.findall(r"http://([\w.-]+):(\d+)", conf)
    assert upstreams == [("api", str(options["--port"]))], f"nginx proxies to {upstreams}"
    assert "resolver 127.0.0.11" in conf, "without Docker's resolver nginx would pin one replica's address"
    assert volume_mounts(proxy)["/etc/nginx/nginx.conf"] == "../proxy/nginx.conf"
    assert re.search(rf"127\.0\.0\.1:{target}/proxy-health", healthcheck_command(proxy))
    assert "location = /proxy-health" in conf


def test_compose_api_replicas_share_their_state() -> None:
    """What must agree across replicas lives outside them: request store and API keys in PostgreSQL, limits and
    cache in Redis, the server secret on one shared volume (at the path the security settings read)."""
    from rag.security.settings import SecuritySettings

    env = service_env(services()["api"])
    for key in ("RAGOPS_STORE__URL", "RAGOPS_SECURITY__DB_URL"):
        assert urlsplit(interpolate(env[key], {})).hostname == "postgres", f"{key}: replicas need one shared database"
    for key in ("RAGOPS_LIMITS__REDIS_URL", "RAGOPS_ANSWER_CACHE__URL"):
        assert urlsplit(interpolate(env[key], {})).hostname == "redis", f"{key}: replicas need one shared Redis"
    secret_dir = str(SecuritySettings().resolve_secret_file(Path(env["RAGOPS_HOME"])).parent)
    mounts = volume_mounts(services()["api"])
    assert mounts.get(secret_dir) in (compose().get("volumes") or {}), f"{secret_dir} must be a named (shared) volume"
    assert "/data" not in mounts, "RAGOPS_HOME (caches, logs) stays per replica"
    worker_env = service_env(next(s for s in ragops_services().values() if s["command"][1:3] == ["server", "worker"]))
    assert worker_env["RAGOPS_STORE__URL"] == env["RAGOPS_STORE__URL"], "the monitor flow reads the api's records"


def test_compose_databases_exist() -> None:
    """Every PostgreSQL URL names a database the postgres service creates (POSTGRES_DB or postgres-init.sql)."""
    created = {service_env(services()["postgres"])["POSTGRES_DB"]}
    created |= set(re.findall(r"CREATE DATABASE (\w+)", POSTGRES_INIT.read_text()))
    assert volume_mounts(services()["postgres"]).get("/docker-entrypoint-initdb.d/10-databases.sql") == (
        "./" + POSTGRES_INIT.name
    )
    urls = [v for s in services().values() for v in service_env(s).values() if v.startswith("postgresql")]
    assert len(urls) >= 4
    for url in urls:
        database = urlsplit(interpolate(url, {})).path.lstrip("/")
        assert database in created, f"{url}: database {database} is never created"


def test_compose_ragops_environments_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ragops service's environment builds ``Settings`` (URL schemes, JSON lists, numbers are checked)."""
    example = read_env_file(ENV_EXAMPLE)
    for name, svc in ragops_services().items():
        for key in [k for k in os.environ if k.startswith("RAGOPS_")]:
            monkeypatch.delenv(key)
        secrets = {"POSTGRES_PASSWORD": "pw", "REDIS_PASSWORD": "pw", "QDRANT_API_KEY": "key"}
        for key, value in service_env(svc).items():
            if key.startswith("RAGOPS_"):
                monkeypatch.setenv(key, interpolate(value, {**example, **secrets}))
        try:
            Settings()
        except ValueError as error:
            pytest.fail(f"compose service {name}: {error}")


def test_prometheus_scrapes_every_api_replica() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ragops-api"]
    assert "static_configs" not in job, "a static api:8000 target scrapes one replica at random"
    (sd,) = job["dns_sd_configs"]
    _, options = parse_ragops_command(services()["api"]["command"], "api")
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == options["--port"]


# ---------------------------------------------------------------------------------------------------------------------
# Qdrant


def test_qdrant_config_is_production_ready_and_matches_compose() -> None:
    config = yaml.safe_load(QDRANT_CONFIG.read_text())
    assert config["telemetry_disabled"] is True
    assert "api_key" not in config.get("service", {}), "the API key comes from QDRANT__SERVICE__API_KEY, not the file"
    storage = config["storage"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services()["qdrant"]["volumes"]}
    for key in ("storage_path", "snapshots_path"):
        assert storage[key] in mounts, f"storage.{key} {storage[key]} is not a volume in docker-compose.yml"
    assert mounts.get("/qdrant/config/production.yaml") == "../qdrant/config.yaml"
    env = service_env(services()["qdrant"])
    assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", env["QDRANT__SERVICE__API_KEY"])
    for name, svc in ragops_services().items():
        url = service_env(svc).get("RAGOPS_QDRANT__URL")
        assert url is None or urlsplit(url).port == config["service"]["http_port"], f"{name}: {url}"
    assert urlsplit(config_map_data()["RAGOPS_QDRANT__URL"]).port == config["service"]["http_port"]


def test_compose_qdrant_is_a_replicated_cluster() -> None:
    """Three nodes: the first starts the cluster, the others bootstrap from it; each announces its own service name
    on the p2p port, keeps its own volumes, and every shard is on more than one node."""
    nodes = qdrant_services()
    assert len(nodes) >= 3, "a Qdrant cluster needs 3 nodes to survive one (consensus)"
    first = "qdrant"
    images, storages = set(), []
    for name, svc in nodes.items():
        env = service_env(svc)
        assert env["QDRANT__CLUSTER__ENABLED"] == "true", name
        p2p = int(env["QDRANT__CLUSTER__P2P__PORT"])
        args = [str(a) for a in svc["command"]]
        assert args[0] == "./qdrant", f"{name}: runs {args[0]}"
        options = dict(zip(args[1::2], args[2::2], strict=True))
        assert options["--uri"] == f"http://{name}:{p2p}", f"{name}: announces {options['--uri']}"
        if name == first:
            assert "--bootstrap" not in options, "the first node starts the cluster"
        else:
            bootstrap = options["--bootstrap"]
            assert bootstrap == f"http://{first}:{p2p}", f"{name}: bootstraps from {bootstrap}"
            assert "depends_on" in svc and first in svc["depends_on"], f"{name} must wait for {first}"
        assert p2p not in {target for _, _, target in published_ports(svc, {})}, f"{name}: p2p port published"
        assert 2 <= int(env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"]) <= len(nodes), name
        mounts = volume_mounts(svc)
        assert mounts["/qdrant/config/production.yaml"] == "../qdrant/config.yaml", name
        storages += [mounts["/qdrant/storage"], mounts["/qdrant/snapshots"]]
        images.add(svc["image"])
    assert len(images) == 1, f"the nodes run different Qdrant versions: {images}"
    assert len(storages) == len(set(storages)), "two nodes share a storage volume"
    env_url = urlsplit(service_env(services()["api"])["RAGOPS_QDRANT__URL"])
    assert env_url.hostname in nodes


def assert_placement_fits_the_cluster(
    env: Mapping[str, str], defaults: Mapping[str, Any], nodes: int, where: str
) -> None:
    """ragops' placement settings build, agree with the cluster's own collection defaults and fit its node count."""
    keys = ("shard_number", "replication_factor", "write_consistency_factor")
    raw = {key: env.get(f"RAGOPS_QDRANT__{key.upper()}") for key in keys}
    assert all(raw.values()), f"{where}: a cluster is configured but ragops leaves {raw} to Qdrant"
    placement = QdrantSettings.model_validate(raw)  # the same validation the processes apply
    assert placement.replication_factor == int(defaults["replication_factor"]), f"{where}: replication factor"
    assert placement.write_consistency_factor == int(defaults["write_consistency_factor"]), f"{where}: consistency"
    assert placement.replication_factor is not None and 2 <= placement.replication_factor <= nodes, where
    assert placement.shard_number is not None and placement.shard_number % nodes == 0, f"{where}: uneven shards"


def test_compose_ragops_creates_collections_as_the_cluster_is_configured() -> None:
    nodes = qdrant_services()
    for name, svc in nodes.items():
        node_env = service_env(svc)
        defaults = {
            key: node_env[f"QDRANT__STORAGE__COLLECTION__{key.upper()}"]
            for key in ("replication_factor", "write_consistency_factor")
        }
        for ragops_name, ragops_svc in ragops_services().items():
            env = service_env(ragops_svc)
            if "RAGOPS_QDRANT__URL" in env:
                assert_placement_fits_the_cluster(env, defaults, len(nodes), f"{ragops_name} vs {name}")


def test_k8s_ragops_creates_collections_as_the_cluster_is_configured() -> None:
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    defaults = values["config"]["storage"]["collection"]
    for workload in workloads():
        for container in containers(workload):
            env = container_env(container)
            if "RAGOPS_QDRANT__URL" in env:
                where = workload["metadata"]["name"]
                assert_placement_fits_the_cluster(env, defaults, values["replicaCount"], where)


def test_qdrant_image_matches_the_client() -> None:
    client = pyproject_pin("qdrant-client").split(".")[:2]
    compose_tag = services()["qdrant"]["image"].split(":")[1]
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    assert values["image"]["tag"] == compose_tag, "compose and the Helm values run different Qdrant versions"
    assert compose_tag.lstrip("v").split(".")[:2] == client, f"Qdrant {compose_tag} vs qdrant-client {client}"


def test_qdrant_helm_values_take_the_key_from_the_ragops_secret() -> None:
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    assert not isinstance(values.get("apiKey"), str), "no literal API key in the Helm values"
    env = {item["name"]: item for item in values["env"]}
    ref = env["QDRANT__SERVICE__API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = k8s_object("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    config = values["config"]
    assert config["telemetry_disabled"] is True and config["cluster"]["enabled"] is True
    assert 2 <= config["storage"]["collection"]["replication_factor"] <= values["replicaCount"]
    context = values["containerSecurityContext"]
    assert context["runAsNonRoot"] and not context["allowPrivilegeEscalation"] and context["readOnlyRootFilesystem"]


# ---------------------------------------------------------------------------------------------------------------------
# Kubernetes


def test_k8s_manifests_name_themselves() -> None:
    for file, doc in k8s_documents():
        assert doc.get("apiVersion") and doc.get("kind"), f"{file}: apiVersion and kind are required"
        metadata = doc.get("metadata") or {}
        assert metadata.get("name"), f"{file}: {doc['kind']} has no metadata.name"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in metadata, f"{file}: {doc['kind']} is cluster-scoped"
        else:
            assert metadata.get("namespace") == "ragops", f"{file}: {doc['kind']} {metadata['name']} not in ragops"


def test_k8s_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = kustomization["resources"]
    assert all((K8S / r).is_file() for r in listed), (
        f"missing resources: {[r for r in listed if not (K8S / r).is_file()]}"
    )
    expected = {p.name for p in manifest_files()} - {SECRET_EXAMPLE.name}
    assert set(listed) == expected, f"kustomization.yaml lists {set(listed) ^ expected} wrongly"
    assert kustomization["namespace"] == "ragops"
    images = {c["image"].split(":")[0] for w in workloads() for c in containers(w)}
    assert images == {i["name"] for i in kustomization["images"]}, "kustomization.yaml must retag the ragops image"


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_k8s_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed")
    errors = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        try:  # strict: unknown fields (typos) are errors too
            validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except validate.ValidationError as error:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {'/'.join(map(str, error.path))}: {error.message}")
    assert not errors, f"{path.name} against Kubernetes {KUBERNETES_VERSION}:\n" + "\n".join(errors)


def test_k8s_workloads_are_restricted_and_bounded() -> None:
    assert workloads()
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert pod_context.get("runAsUser", 0) != 0
        assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp"
        assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token needed"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})), f"{where}: {bound}"
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert context.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes.get(mounts.get("/tmp", ""), {}), f"{where}: /tmp must be an emptyDir"
            assert "/data" in mounts, f"{where}: RAGOPS_HOME (/data) must be a volume"


def test_k8s_commands_are_cli_commands() -> None:
    used = []
    for workload in workloads():
        for container in containers(workload):
            if is_dask(container):
                continue  # parsed by dask_containers()
            sub, _ = parse_ragops_command(container_command(container), workload["metadata"]["name"])
            used.append(sub)
    assert sorted(used) == sorted(SERVER_COMMANDS), f"each `ragops server` command once, got {used}"
    assert set(dask_containers()) == DASK_COMMANDS, f"expected dask {sorted(DASK_COMMANDS)}"


def test_k8s_probes_ask_the_port_the_process_listens_on() -> None:
    for workload in workloads():
        for container in containers(workload):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            env = container_env(container)
            if is_dask(container):
                _, params = parse_dask_command(container_command(container), workload["metadata"]["name"])
                expected = address_port(params["dashboard_address"])  # its HTTP server: /health
            else:
                _, options = parse_ragops_command(container_command(container), workload["metadata"]["name"])
                expected = options.get("--port") or int(env["PREFECT_RUNNER_SERVER_PORT"])
            probes = [container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container]
            assert probes, f"{workload['metadata']['name']}: no probes"
            for probe in probes:
                port = probe["httpGet"]["port"]
                assert ports.get(port, port) == expected, f"{workload['metadata']['name']}: probe on {port}"


def test_k8s_dask_workers_point_at_the_scheduler() -> None:
    """The Prefect worker's flow and every Dask worker use the scheduler's Service; the Dask workers see the sources
    at the flow's paths, on the flow's node while the source claim is ReadWriteOnce."""
    dask = dask_containers()
    scheduler_workload, scheduler, scheduler_params = dask["scheduler"]
    worker_workload, worker, worker_params = dask["worker"]
    scheduler_ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    scheduler_port = int(scheduler_params["port"])
    assert scheduler_port in scheduler_ports.values(), f"the scheduler container does not declare port {scheduler_port}"
    (service,) = [
        s
        for s in k8s_objects("Service")
        if labels_match(s["spec"]["selector"], scheduler_workload["spec"]["template"]["metadata"]["labels"])
    ]
    port = next(p["port"] for p in service["spec"]["ports"] if scheduler_ports.get(p["targetPort"]) == scheduler_port)
    address = f"tcp://{service['metadata']['name']}:{port}"
    assert worker_params["scheduler"] == address, f"Dask workers connect to {worker_params['scheduler']}"
    assert worker_params["nthreads"] == 1, "partitioning holds the GIL: one thread per worker process"
    assert scheduler_workload["spec"]["replicas"] == 1, "a second scheduler would split the workers"
    assert scheduler_workload["spec"]["strategy"]["type"] == "Recreate"
    assert worker_workload["spec"]["replicas"] >= 2

    flow_workload = k8s_object("Deployment", "worker")
    (flow,) = flow_workload["spec"]["template"]["spec"]["containers"]
    assert container_env(flow)["RAGOPS_INGEST__DASK_ADDRESS"] == address
    assert container_env(worker)["PREFECT_API_URL"] == config_map_data()["RAGOPS_PREFECT__API_URL"]

    def source_mounts(workload: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in workload["spec"]["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        return {m["mountPath"]: claims[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in claims}

    flow_sources = source_mounts(flow_workload, flow)
    dask_sources = source_mounts(worker_workload, worker)
    assert "/sources" in flow_sources and dask_sources.get("/sources") == flow_sources["/sources"]
    claim = k8s_object("PersistentVolumeClaim", flow_sources["/sources"])
    if claim["spec"]["accessModes"] == ["ReadWriteOnce"]:
        terms = worker_workload["spec"]["template"]["spec"]["affinity"]["podAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        flow_labels = flow_workload["spec"]["template"]["metadata"]["labels"]
        same_node = [
            term
            for term in terms
            if term["topologyKey"] == "kubernetes.io/hostname"
            and labels_match(term["labelSelector"]["matchLabels"], flow_labels)
        ]
        assert same_node, "a ReadWriteOnce claim mounts on one node only: Dask workers must run on the worker's node"


def test_k8s_api_is_replicated_with_readiness_and_liveness() -> None:
    api = k8s_object("Deployment", "api")
    assert api["spec"]["replicas"] == 2
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container_env(container)["RAGOPS_SERVICE__HOST"] == "0.0.0.0"


def test_k8s_api_replicas_share_their_state() -> None:
    """As in compose: the request store and API keys in one database every replica reaches (URLs from the Secret),
    and one server secret, mounted from the Secret at the path the security settings read, never generated per pod
    on its emptyDir. The worker's flows read the same request store."""
    from rag.security.settings import SecuritySettings

    api = k8s_object("Deployment", "api")
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    items = {item["name"]: item for item in container.get("env", [])}
    assert {"RAGOPS_STORE__URL", "RAGOPS_SECURITY__DB_URL", "RAGOPS_SECURITY__SECRET_FILE"} <= settings_env_names()
    secret = k8s_object("Secret", "ragops-secrets")["stringData"]
    refs = {}
    for key in ("RAGOPS_STORE__URL", "RAGOPS_SECURITY__DB_URL"):
        assert key in items, f"api: no {key}: each replica would keep its own SQLite under /data"
        ref = items[key].get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"api: {key} holds a password, it must come from a Secret"
        assert not ref.get("optional"), f"api: without {key} a replica silently falls back to its own SQLite"
        assert ref["key"] in k8s_object("Secret", ref["name"])["stringData"], f"api: {key} from a missing key"
        refs[key] = (ref["name"], ref["key"])

    home = Path(container_env(container)["RAGOPS_HOME"])
    secret_file = SecuritySettings(secret_file=items["RAGOPS_SECURITY__SECRET_FILE"]["value"]).resolve_secret_file(home)
    mounts = [m for m in container["volumeMounts"] if secret_file.is_relative_to(m["mountPath"])]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount holds the file
    assert mount.get("readOnly") is True, "the server secret is read, never (re)created, by a replica"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "secret" in volume, f"{secret_file} is on {volume}: each replica would create its own server secret"
    source = volume["secret"]
    assert source["secretName"] == "ragops-secrets" and not source.get("optional")
    paths = {item["path"]: item["key"] for item in source["items"]}
    relative = str(secret_file.relative_to(mount["mountPath"]))
    assert relative in paths, f"{secret_file}: the secret volume has no item at {relative}"
    assert paths[relative] in secret, f"ragops-secrets has no key {paths[relative]}"

    (worker,) = k8s_object("Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    worker_ref = next(i for i in worker["env"] if i["name"] == "RAGOPS_STORE__URL")["valueFrom"]["secretKeyRef"]
    assert (worker_ref["name"], worker_ref["key"]) == refs["RAGOPS_STORE__URL"], (
        "the monitor flow reads the api's records"
    )


def test_k8s_worker_is_a_single_replica_that_never_overlaps() -> None:
    worker = k8s_object("Deployment", "worker")
    assert worker["spec"]["replicas"] == 1, "one worker per work queue, or every schedule runs twice"
    assert worker["spec"]["strategy"]["type"] == "Recreate", "a rolling update would run two workers at once"


def test_k8s_hpa_and_pdb_protect_the_api() -> None:
    api = k8s_object("Deployment", "api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    (hpa,) = k8s_objects("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "api")
    assert hpa["spec"]["minReplicas"] == api["spec"]["replicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (pdb,) = k8s_objects("PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every drain"


def test_k8s_services_select_a_workload_and_a_named_port() -> None:
    for service in k8s_objects("Service"):
        selector = service["spec"]["selector"]
        selected = [w for w in workloads() if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        names = {p["name"] for c in containers(selected[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {service['metadata']['name']}: no port {port['targetPort']}"


def test_k8s_env_names_are_settings_and_refs_resolve() -> None:
    names = set(config_map_data()) | set(k8s_object("Secret", "ragops-secrets")["stringData"])
    claims = {pvc["metadata"]["name"] for pvc in k8s_objects("PersistentVolumeClaim")}
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in containers(workload):
            names |= {item["name"] for item in container.get("env", [])}
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in k8s_object("Secret", ref["name"])["stringData"], f"no key {ref['key']}"
    assert_known_settings(names, "infra/k8s")


def test_k8s_every_volume_claim_uses_the_encrypted_storage_class() -> None:
    """Encryption at rest (infra/SECURITY.md): no claim falls back to the cluster's default class, which may not
    encrypt; the class asks the provisioner for encrypted disks and keeps released volumes."""
    storage_class = k8s_object("StorageClass", ENCRYPTED_CLASS)
    assert storage_class["parameters"]["encrypted"] == "true"
    assert storage_class["reclaimPolicy"] == "Retain"
    claims = k8s_objects("PersistentVolumeClaim")
    assert claims
    for claim in claims:
        assert claim["spec"].get("storageClassName") == ENCRYPTED_CLASS, f"PVC {claim['metadata']['name']}"
    for workload in workloads():  # claim templates of StatefulSets too, should one appear
        for template in workload["spec"].get("volumeClaimTemplates", []):
            assert template["spec"].get("storageClassName") == ENCRYPTED_CLASS, workload["metadata"]["name"]
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    for volume in ("persistence", "snapshotPersistence"):
        assert values[volume]["storageClassName"] == ENCRYPTED_CLASS, f"qdrant-values.yaml {volume}"


def test_k8s_secret_example_holds_no_values() -> None:
    secret = k8s_object("Secret", "ragops-secrets")
    assert "data" not in secret, "use stringData with empty values in the example"
    assert all(value == "" for value in secret["stringData"].values()), "the example must not contain real values"


def test_k8s_ragops_processes_use_the_qdrant_server() -> None:
    """The embedded Qdrant store opens in one process only: every pod that reads the index needs a server."""
    for workload in workloads():
        for container in containers(workload):
            if is_dask(container):
                continue  # partitioning reads files, never the index
            sub, _ = parse_ragops_command(container_command(container), workload["metadata"]["name"])
            env = container_env(container)
            if sub not in INDEX_FREE_COMMANDS:
                assert env.get("RAGOPS_QDRANT__URL", "").startswith("http"), f"{workload['metadata']['name']}"
                assert env.get("RAGOPS_QDRANT__API_KEY") == "<secret>", f"{workload['metadata']['name']}: key"


def test_k8s_mlflow_accepts_the_host_name_clients_use() -> None:
    (container,) = k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    env = container_env(container)
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    netloc = urlsplit(config_map_data()["RAGOPS_MLFLOW__TRACKING_URI"]).netloc
    assert any(fnmatch.fnmatch(netloc, a) for a in allowed), f"MLflow would refuse Host {netloc}"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


# ---------------------------------------------------------------------------------------------------------------------
# Prefect


def test_prefect_yaml_passes_prefects_own_validation() -> None:
    try:
        from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel
        from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    except ImportError as error:  # private modules: skip, loudly, if a Prefect upgrade moves them
        pytest.skip(f"Prefect's prefect.yaml model moved ({error}); validate with `prefect deploy --all` instead")
    model = PrefectYamlModel.model_validate(prefect_project())
    assert len(model.deployments) == len(prefect_project()["deployments"])
    for deployment in prefect_project()["deployments"]:
        unknown = set(deployment) - set(DeploymentConfig.model_fields)
        assert not unknown, f"{deployment['entrypoint']}: keys Prefect ignores (typos?): {unknown}"
        unknown = set(deployment["work_pool"]) - {"name", "work_queue_name", "job_variables"}
        assert not unknown, f"{deployment['entrypoint']}: work_pool keys Prefect ignores: {unknown}"
        for schedule in deployment.get("schedules") or []:
            _schedule_config_to_deployment_schedule(schedule)  # raises on a bad cron or timezone


def test_prefect_yaml_declares_the_ragops_deployments() -> None:
    project = prefect_project()
    assert project["prefect-version"] == pyproject_pin("prefect")
    deployments = prefect_deployments()
    assert set(deployments) == set(EXPECTED_DEPLOYMENTS)
    for entrypoint, (name, cadence) in EXPECTED_DEPLOYMENTS.items():
        deployment = deployments[entrypoint]
        assert deployment["name"] == name, f"{entrypoint}: deployment name"
        crons = [s["cron"] for s in deployment.get("schedules") or []]
        assert [cron_cadence(c) for c in crons] == ([cadence] if cadence else []), f"{entrypoint}: schedule {crons}"
        assert deployment["work_pool"]["name"], f"{entrypoint}: no work pool"


def test_prefect_yaml_nightly_matches_the_served_deployment() -> None:
    nightly = prefect_deployments()["flows/evaluate.py:evaluate_flow"]
    assert nightly["name"] == module_constant(REPO / "flows" / "deployments.py", "EVALUATE_DEPLOYMENT")
    assert nightly["schedules"][0]["cron"] == EvalSettings.model_fields["schedule_cron"].default


def test_prefect_yaml_monitor_matches_the_served_deployment() -> None:
    monitor = prefect_deployments()["flows/monitor.py:monitor_flow"]
    assert monitor["name"] == module_constant(REPO / "flows" / "deployments.py", "MONITOR_DEPLOYMENT")
    minutes = MonitorSettings.model_fields["interval_minutes"].default
    assert monitor["schedules"][0]["cron"] == f"*/{minutes:.0f} * * * *"


def test_prefect_yaml_runs_in_the_images_source_folder() -> None:
    (step,) = prefect_project()["pull"]
    workdir = [a for i, a in final_stage() if i == "WORKDIR"][-1]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == workdir
    targets = {a.split()[-1].rstrip("/") for i, a in final_stage() if i == "COPY"}
    assert workdir in targets, f"the image must keep the source (flows/...) in {workdir}"


@pytest.mark.parametrize("entrypoint", sorted(EXPECTED_DEPLOYMENTS))
def test_prefect_entrypoint_exists(entrypoint: str) -> None:
    file, _, function = entrypoint.partition(":")
    path = REPO / file
    if not path.exists():
        pytest.fail(f"{entrypoint}: {file} does not exist")
    node = flow_function(path, function)
    deployment = prefect_deployments()[entrypoint]
    parameters, required = function_parameters(node)
    given = set(deployment.get("parameters") or {})
    assert given <= parameters, f"{entrypoint}: {function} takes no {given - parameters}"
    if deployment.get("schedules"):
        assert required <= given, f"{entrypoint}: scheduled runs would lack {required - given}"
    assert flow_name(node), f"{entrypoint}: flow without a name"


def test_prefect_entrypoints_reuse_no_flow_and_deployment_pair() -> None:
    pairs = []
    for entrypoint, deployment in prefect_deployments().items():
        file, _, function = entrypoint.partition(":")
        name = flow_name(flow_function(REPO / file, function)) if (REPO / file).exists() else function
        pairs.append((name, deployment["name"]))
    assert len(pairs) == len(set(pairs)), f"two deployments share a flow/deployment name: {pairs}"
