"""The deployment files in deploy/ agree with the code they deploy.

No Docker daemon or cluster runs here, so what can drift is checked against the code itself: every
``KBSEARCH_*`` variable that the Dockerfiles, deploy/compose.yaml and the Kubernetes base set is a field of
``Settings`` and its value validates; probe, health-check and scrape paths are routes of the real app; the
ports of the container command, EXPOSE, the health check, the probes, the Service, the ServiceMonitor and
Prometheus's scrape target are one port; the ingest Job and CronJob run a real ``kbsearch`` subcommand; every
metric a Grafana panel or an alert queries is on the app's real ``/metrics``; the PrometheusRule carries
deploy/prometheus/alerts.yml's groups. Linters check the rest: hadolint on both Dockerfiles, the compose
specification's JSON schema on compose.yaml, promtool on the PrometheusRule and Prometheus's config, and
``kubectl kustomize`` on the Kubernetes base where kubectl is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from debian import ensure_binary
from kbsearch.api.app import create_app
from kbsearch.cli import build_parser
from kbsearch.config import DashboardSettings, RerankSettings, Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from support import REPO, SMALL_KB

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s" / "base"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda")
GRAFANA_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kbsearch.json"
COMPOSE_PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RERANK_TEMPLATE = DEPLOY / "vllm" / "qwen3_reranker.jinja"
METRIC_NAME = re.compile(r"\bkbsearch_[a-z0-9_]*[a-z0-9]\b")
SETTING_NAME = re.compile(r"\bKBSEARCH_[A-Z0-9_]*[A-Z0-9]\b(?!\*)")


# --- reading the deployment files --------------------------------------------------------------------


def setting_names() -> set[str]:
    """Every environment name ``Settings`` reads, from its own fields: ``KBSEARCH_<FIELD>`` for a shared
    field, ``KBSEARCH_<GROUP>__<FIELD>`` for each field of a group."""
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {f"KBSEARCH_{name.upper()}__{sub.upper()}" for sub in group.model_fields}
        else:
            names.add(f"KBSEARCH_{name.upper()}")
    return names


def env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv / kustomize env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` with ``env`` (deploy/.env.example).

    Raises:
        AssertionError: a required variable (no default) is missing from ``env``.
    """
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        assert name in env, f"compose.yaml needs ${{{name}}}, which {ENV_EXAMPLE.name} does not set"
        return env[name]

    return INTERPOLATION.sub(one, value)


def compose() -> dict[str, Any]:
    """deploy/compose.yaml with its variables resolved from deploy/.env.example."""
    env = env_file(ENV_EXAMPLE)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment (mapping or ``KEY=value`` list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def service_flag(service: dict[str, Any], flag: str) -> str:
    """The value after ``flag`` in a compose service's command list."""
    command = [str(c) for c in service["command"]]
    assert flag in command, f"{flag} not in {command}"
    return command[command.index(flag) + 1]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (INSTRUCTION, rest), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        op, _, rest = text.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """The variables a Dockerfile's ``ENV k=v ...`` instructions set."""
    env: dict[str, str] = {}
    for op, rest in dockerfile(path):
        if op == "ENV":
            words = shlex.split(rest)
            assert all("=" in w for w in words), f"{path.name}: write ENV as key=value pairs: ENV {rest}"
            env.update(w.split("=", 1) for w in words)
    return env


def dockerfile_exec(path: Path, op: str) -> list[str]:
    """The exec-form (JSON) argument list of the last ``op`` (ENTRYPOINT, CMD) of a Dockerfile."""
    found = [rest for o, rest in dockerfile(path) if o == op]
    assert found, f"{path.name} has no {op}"
    return json.loads(found[-1])


def k8s_kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def k8s_docs() -> list[dict[str, Any]]:
    """Every object of the files kustomization.yaml lists."""
    docs = []
    for rel in k8s_kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / rel).read_text(encoding="utf-8")) if d]
    return docs


def k8s_one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (docs if docs is not None else k8s_docs()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s/base, found {len(found)}"
    return found[0]


def k8s_pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod spec of each workload, by kind."""
    specs = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            specs[d["kind"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            specs[d["kind"]] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


def k8s_secret_example() -> dict[str, str]:
    """The Secret's keys and example values: the secretGenerator's env file, read from its ``.example``
    (the real one is not committed)."""
    data: dict[str, str] = {}
    for gen in k8s_kustomization().get("secretGenerator", []):
        for rel in gen.get("envs", []):
            data.update(env_file(K8S / f"{rel}.example"))
    return data


def k8s_container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """What a container's environment holds: its ConfigMap and Secret (envFrom), then its own env."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {g["name"]: k8s_secret_example() for g in k8s_kustomization().get("secretGenerator", [])}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name!r}, which the base does not define"
            env.update(configmaps[name])
        else:
            name = source["secretRef"]["name"]
            assert name in secrets, f"envFrom names Secret {name!r}, which the base does not generate"
            env.update(secrets[name])
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "valueFrom" not in e})
    return env


def validated(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], where: str) -> Settings:
    """``Settings`` built from exactly ``env``'s ``KBSEARCH_*`` variables (every other one removed)."""
    for name in [n for n in os.environ if n.startswith("KBSEARCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("KBSEARCH_"):
            monkeypatch.setenv(name, value)
    try:
        return Settings()
    except ValueError as exc:
        pytest.fail(f"{where}: its KBSEARCH_* values do not validate: {exc}")


def cli_args(argv: list[str], where: str) -> Any:
    """``argv`` (``kbsearch SUBCOMMAND ...``) parsed by the real CLI parser."""
    assert argv[:1] == ["kbsearch"], f"{where}: runs {argv[:1]}, not kbsearch"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid kbsearch command line")


def tool(name: str) -> str:
    """A linter installed by the test extra (in this venv's bin, or on PATH); skipped when missing, a
    failure when KBSEARCH_TEST_REQUIRE_TOOLS=1 (CI)."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.exists() else shutil.which(name)
    if path is None:
        reason = f"{name} not installed (pip install -e '.[test]' installs it)"
        if os.environ.get("KBSEARCH_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(reason + " (KBSEARCH_TEST_REQUIRE_TOOLS=1)")
        pytest.skip(reason)
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                          check=False)


# --- the real app ---------------------------------------------------------------------------------------


@pytest.fixture()
def app_client(settings, built):
    """The real app over the small KB (hash embedder), after one question, so every family has samples."""
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as client:
        assert client.post("/ask", json={"question": SMALL_KB[0].question}).status_code == 200
        yield client


@pytest.fixture()
def routes(app_client) -> set[str]:
    return {getattr(r, "path", "") for r in app_client.app.routes}


@pytest.fixture()
def exported(app_client) -> set[str]:
    """Every series name the app's /metrics can serve: each family's samples, plus the names its type
    implies (a counter's ``_total``, a histogram's ``_bucket``/``_sum``/``_count``) for families with no
    sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(app_client.get("/metrics").text):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


# --- settings ------------------------------------------------------------------------------------------


def test_every_setting_named_in_deploy_exists() -> None:
    known = setting_names()
    assert {"KBSEARCH_HOME", "KBSEARCH_ADMIN_KEYS", "KBSEARCH_EMBED__BASE_URL"} <= known  # the parser works
    unknown = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):  # .env.example included
        for name in SETTING_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            if name not in known:
                unknown.append(f"{path.relative_to(REPO)}: {name}")
    assert not unknown, "names that are not kbsearch settings:\n" + "\n".join(sorted(set(unknown)))


def test_dockerfile_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for path in DOCKERFILES:
        env = dockerfile_env(path)
        assert "KBSEARCH_HOME" in env, f"{path.name} sets no KBSEARCH_HOME"
        settings = validated(monkeypatch, env, path.name)
        volumes = [v for op, rest in dockerfile(path) if op == "VOLUME" for v in json.loads(rest)]
        assert str(settings.home) in volumes, f"{path.name}: KBSEARCH_HOME {settings.home} is not a VOLUME"


def test_compose_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose()
    kb = spec["services"]["kbsearch"]
    env = {**dockerfile_env(DEPLOY / kb["build"]["dockerfile"].removeprefix("deploy/")), **service_env(kb)}
    settings = validated(monkeypatch, env, "compose.yaml service kbsearch")
    assert settings.admin_keys, "compose.yaml: kbsearch serves off loopback and needs KBSEARCH_ADMIN_KEYS"
    assert settings.questionlog.url.startswith("postgresql+psycopg://"), "the question log should be PostgreSQL"
    assert urlparse(settings.questionlog.url).hostname in spec["services"]

    # The model servers kbsearch calls are compose services, on the port their command passes, serving
    # the model name kbsearch sends.
    for url, model, service in ((settings.embed.base_url, settings.embed.model, "embed"),
                                (settings.rerank.base_url, settings.rerank.model, "rerank")):
        server = spec["services"][urlparse(url).hostname]
        assert urlparse(url).hostname == service
        assert str(urlparse(url).port) == service_flag(server, "--port"), f"{url} vs {service}'s --port"
        assert service_flag(server, "--served-model-name") == model, f"{service} serves another model name"
    assert str(settings.home) in {v.split(":")[1] for v in kb["volumes"]}, "KBSEARCH_HOME is not a volume"


def test_k8s_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    for kind, pod in k8s_pod_specs(docs).items():
        for container in pod["containers"]:
            env = {**dockerfile_env(DOCKERFILES[0]), **k8s_container_env(container, docs)}
            settings = validated(monkeypatch, env, f"k8s {kind} container {container['name']}")
            assert settings.admin_keys, f"{kind}: no KBSEARCH_ADMIN_KEYS in its ConfigMap/Secret"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert str(settings.home) in mounts, f"{kind}: KBSEARCH_HOME {settings.home} is not a mounted volume"
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
            home_volume = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == str(settings.home))
            assert claims[home_volume] == "kbsearch-home", f"{kind}: KBSEARCH_HOME is not the shared claim"
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "kbsearch-home")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "replicas and jobs share KBSEARCH_HOME"


def test_kustomization_lists_every_manifest() -> None:
    listed = set(k8s_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present == listed, f"not listed (never deployed): {present - listed}; missing: {listed - present}"


# --- commands, routes and ports --------------------------------------------------------------------------


def test_container_commands_are_real_kbsearch_commands() -> None:
    for path in DOCKERFILES:
        args = cli_args(dockerfile_exec(path, "ENTRYPOINT") + dockerfile_exec(path, "CMD"), path.name)
        assert args.command == "serve" and args.host == "0.0.0.0", f"{path.name}: not `kbsearch serve --host 0.0.0.0`"
    docs = k8s_docs()
    specs = k8s_pod_specs(docs)
    assert set(specs) == {"Deployment", "Job", "CronJob"}
    for kind, pod in specs.items():
        (container,) = pod["containers"]
        args = cli_args(container["command"] + container["args"], f"k8s {kind}")
        assert args.command == ("serve" if kind == "Deployment" else "ingest"), f"{kind} runs {args.command}"
        if args.command == "ingest":
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            for path in args.paths:
                assert any(path == m or path.startswith(m + "/") for m in mounts), f"{kind}: {path} is not mounted"


def _port_of(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"port {port!r} is not a named port of container {container['name']}"
    return named[port]


def test_probe_and_scrape_paths_are_routes(routes: set[str]) -> None:
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    docs = k8s_docs()
    (api,) = k8s_pod_specs(docs)["Deployment"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    paths = {f"{probe} probe": api[probe]["httpGet"]["path"]
             for probe in ("readinessProbe", "livenessProbe", "startupProbe") if probe in api}
    for endpoint in k8s_one("ServiceMonitor", docs)["spec"]["endpoints"]:
        paths["ServiceMonitor"] = endpoint.get("path", "/metrics")
    for job in yaml.safe_load(COMPOSE_PROMETHEUS.read_text(encoding="utf-8"))["scrape_configs"]:
        paths[f"prometheus job {job['job_name']}"] = job.get("metrics_path", "/metrics")
    for path in DOCKERFILES:
        (check,) = [rest for op, rest in dockerfile(path) if op == "HEALTHCHECK"]
        paths[f"{path.name} HEALTHCHECK"] = urlparse(re.search(r"http://[^'\" ]+", check).group(0)).path
    wrong = {where: p for where, p in paths.items() if p not in routes}
    assert not wrong, f"not routes of the app: {wrong}"


def test_ports_agree() -> None:
    # Images: the port `serve` is given, EXPOSE and the HEALTHCHECK's URL.
    for path in DOCKERFILES:
        port = cli_args(dockerfile_exec(path, "ENTRYPOINT") + dockerfile_exec(path, "CMD"), path.name).port
        exposed = [int(p) for op, rest in dockerfile(path) if op == "EXPOSE" for p in rest.split()]
        (check,) = [rest for op, rest in dockerfile(path) if op == "HEALTHCHECK"]
        assert exposed == [port], f"{path.name}: EXPOSE {exposed} but serve --port {port}"
        assert urlparse(re.search(r"http://[^'\" ]+", check).group(0)).port == port, f"{path.name}: HEALTHCHECK port"
    image_port = port

    # Compose: the published container port and Prometheus's scrape target.
    spec = compose()
    published = [int(str(p).rsplit(":", 1)[1]) for p in spec["services"]["kbsearch"]["ports"]]
    assert published == [image_port], f"compose publishes container port {published}, the image serves {image_port}"
    targets = [t for job in yaml.safe_load(COMPOSE_PROMETHEUS.read_text(encoding="utf-8"))["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"kbsearch:{image_port}"], f"Prometheus scrapes {targets}"

    # Kubernetes: serve's --port, the container port, every probe, KBSEARCH_API__PORT, the Service's
    # targetPort (for a Service that selects the pods) and the ServiceMonitor's port name.
    docs = k8s_docs()
    deployment = k8s_one("Deployment", docs)
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    port = cli_args(api["command"] + api["args"], "k8s Deployment").port
    assert [p["containerPort"] for p in api["ports"]] == [port], "containerPort vs serve --port"
    assert port == image_port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port_of(api, api[probe]["httpGet"]["port"]) == port, f"{probe} port"
    api_port = k8s_container_env(api, docs).get("KBSEARCH_API__PORT")
    assert api_port in (None, str(port)), f"KBSEARCH_API__PORT {api_port} vs serve --port {port}"
    service = k8s_one("Service", docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no API pod"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for p in service["spec"]["ports"]:
        assert _port_of(api, p["targetPort"]) == port, f"Service port {p.get('name')} targets another port"
    monitor = k8s_one("ServiceMonitor", docs)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), \
        "the ServiceMonitor selects no Service"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, f"ServiceMonitor port {endpoint['port']!r} is not a Service port"
    target = k8s_one("HorizontalPodAutoscaler", docs)["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"compose service {name} mounts {source}, which does not exist"


def test_rerank_template_instruction_is_kbsearch_default() -> None:
    default = RerankSettings().instruction
    assert f'default("{default}")' in RERANK_TEMPLATE.read_text(encoding="utf-8"), \
        f"{RERANK_TEMPLATE.name}'s default instruction is not rerank.instruction's default {default!r}"


# --- metrics and alerts ----------------------------------------------------------------------------------


def _grafana_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def _alert_exprs(groups: list[dict[str, Any]]) -> list[str]:
    return [r["expr"] for g in groups for r in g["rules"]]


def test_every_queried_metric_is_exported(exported: set[str]) -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    rule = k8s_one("PrometheusRule")
    sources = {"Grafana": _grafana_exprs(dashboard), "PrometheusRule": _alert_exprs(rule["spec"]["groups"]),
               "alerts.yml": _alert_exprs(yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"])}
    for where, exprs in sources.items():
        used = {m for e in exprs for m in METRIC_NAME.findall(e)}
        assert used, f"no kbsearch metric found in {where}"
        missing = used - exported
        assert not missing, f"{where} queries metrics /metrics does not export: {sorted(missing)}"


def test_grafana_action_lines_are_the_dashboard_settings() -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    lines = DashboardSettings()

    def steps(metric: str) -> list[float]:
        panels = [p for p in dashboard["panels"] if any(metric in t["expr"] for t in p.get("targets", []))]
        assert panels, f"no panel queries {metric}"
        return [s["value"] for p in panels for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                if s["value"] is not None]

    assert lines.handoff_line in steps('answered="false"}[1h]'), "the hand-off panel has no line at handoff_line"
    assert lines.latency_line_ms / 1000 in steps("kbsearch_question_duration_seconds_bucket"), \
        "the latency panel has no line at latency_line_ms"


def test_prometheus_rule_carries_the_alert_rules() -> None:
    rule = k8s_one("PrometheusRule")
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"], f"PrometheusRule's groups differ from {ALERTS.name}'s"


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_binary("promtool", "prometheus")


def test_promtool_checks_the_prometheus_rule(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "kbsearch-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": k8s_one("PrometheusRule")["spec"]["groups"]}), encoding="utf-8")
    proc = run(promtool, "check", "rules", str(rules))
    assert proc.returncode == 0, f"promtool check rules (PrometheusRule spec) failed:\n{proc.stdout}"


def test_promtool_checks_compose_prometheus_config(promtool: str, tmp_path: Path) -> None:
    # Laid out as compose mounts it: the config, and the rule file at rules/alerts.yml beside it.
    (tmp_path / "rules").mkdir()
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "rules" / "alerts.yml")
    mounted = {v.split(":")[1] for v in compose()["services"]["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules/alerts.yml"} <= mounted
    proc = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0 and "1 rule files found" in proc.stdout, f"promtool check config:\n{proc.stdout}"


# --- linters -----------------------------------------------------------------------------------------------


def test_hadolint_passes_on_both_dockerfiles() -> None:
    hadolint = tool("hadolint")
    proc = run(hadolint, *(str(p.relative_to(REPO)) for p in DOCKERFILES))
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}"


def test_compose_file_matches_the_compose_specification() -> None:
    checker = tool("check-jsonschema")
    proc = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE.relative_to(REPO)))
    assert proc.returncode == 0, f"compose.yaml against the compose specification's schema:\n{proc.stdout}"


def test_docker_compose_config_where_the_plugin_exists() -> None:
    """``docker compose config`` needs no daemon, only the compose plugin (absent on Debian's docker)."""
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    proc = run(docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet")
    assert proc.returncode == 0, f"docker compose config:\n{proc.stdout}"


def test_kustomize_builds_the_base(tmp_path: Path) -> None:
    """``kubectl kustomize`` where kubectl is installed (not a Debian package in bookworm: never required)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    base = tmp_path / "base"
    shutil.copytree(K8S, base)
    for gen in k8s_kustomization().get("secretGenerator", []):
        for rel in gen.get("envs", []):
            shutil.copy(base / f"{rel}.example", base / rel)
    proc = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for kind, pod in k8s_pod_specs(docs).items():
        refs = {s["secretRef"]["name"] for c in pod["containers"] for s in c.get("envFrom", []) if "secretRef" in s}
        assert refs and refs <= secrets, f"{kind} refers to Secrets {refs}, the build made {secrets}"
