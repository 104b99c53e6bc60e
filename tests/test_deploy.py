"""Deployment files against the code: Dockerfile, docker-compose.yml, Prometheus, Grafana.

No Docker engine is needed (nor used): the files are parsed and checked against the service's
settings classes and against the /metrics of a real running service (`python -m service` with the
embedded default model on the session's redis-server). Every metric name and label that a
dashboard panel, a dashboard variable or an alert rule uses must be one that service exports.
With Debian's `prometheus` package installed (promtool and the server) the configs and alert
unit tests also go through promtool, and a real Prometheus scrapes the service and runs every
dashboard query; without it those checks are skipped and the PromQL is checked minimally here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings

from prompt_store.local_redis import free_port
from prompt_store.settings import StoreSettings
from service.settings import ServiceSettings
from tests.service_fixtures import ADMIN_KEY, INSPECT_KEY, ServiceProcess

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "service" / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "inspection.json"
SAMPLES = REPO / "service" / "assets" / "samples"

SERVICE_NAMES = ("inspector", "inspector-gpu")  # compose services that run the service image


# --------------------------------------------------------------------------------------------
# helpers: files


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _prometheus() -> dict:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())


def _alerts() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with an empty environment, `$$` -> `$`."""
    value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    return value.replace("$$", "$")


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _dockerfile_stages() -> list[dict]:
    """[{name, base, instructions: [(KEYWORD, args)]}] with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, line
            stages.append({"base": m.group(1), "name": m.group(2), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, " ".join(args.split())))
    return stages


def _dockerfile_args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    head = (REPO / "Dockerfile").read_text().split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)", head, re.MULTILINE))


def _dockerfile_env(stage: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage["instructions"]:
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def _stage(name: str) -> dict:
    return next(s for s in _dockerfile_stages() if s["name"] == name)


def _setting_env_names() -> set[str]:
    """Every environment variable the service reads, from its pydantic-settings classes."""
    from models.runtime.select import RuntimeSettings

    names: set[str] = set()
    classes: tuple[type[BaseSettings], ...] = (ServiceSettings, StoreSettings, RuntimeSettings)
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(alias.upper() if isinstance(alias, str) else (prefix + field_name).upper())
    return names


# --------------------------------------------------------------------------------------------
# helpers: PromQL (a minimal reading: balanced brackets, metric names, label names)

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
TOKEN = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-zA-Z]*|[a-zA-Z_:][\w:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def _balanced(text: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def promql_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric name, grouping label names) of `expr`."""
    text = STRING.sub('""', expr)
    assert _balanced(text), f"unbalanced brackets in {expr!r}"
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, Grafana's $__rate_interval
    assert "$" not in text, f"a Grafana variable outside a string or range in {expr!r}"
    grouping: set[str] = set()
    for m in GROUPING.finditer(text):
        grouping.update(name.strip() for name in m.group(2).split(",") if name.strip())
    text = GROUPING.sub(" ", text)
    matched: dict[str, set[str]] = {}
    metrics: set[str] = set()
    for m in SELECTOR.finditer(text):
        assert m.group(1), f"a selector without a metric name in {expr!r}"
        metrics.add(m.group(1))
        matched.setdefault(m.group(1), set()).update(MATCHER.findall(m.group(2)))
    text = SELECTOR.sub(lambda m: f" {m.group(1)} ", text)
    for m in TOKEN.finditer(text):
        word = m.group(0)
        if word[0].isdigit() or word in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[m.end() :]):  # a function call
            continue
        metrics.add(word)
    return metrics, matched, grouping


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, plus the metric selector of each query variable."""
    out = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", query.strip())
            assert m, f"variable {var['name']}: only label_values(metric, label) is supported"
            out.append((f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def _alert_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in _alerts()]


def _target_labels() -> set[str]:
    """Labels Prometheus adds to every scraped series (job, instance, relabelled ones)."""
    labels = {"job", "instance"}
    for job in _prometheus()["scrape_configs"]:
        for rc in job.get("relabel_configs", []):
            if "target_label" in rc:
                labels.add(rc["target_label"])
    return labels


def _grafana_substituted(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus accepts."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_installs_torch_with_the_readme_pin_before_the_project():
    readme_pin = re.search(r"^pip install (torch==\S+)$", (REPO / "README.md").read_text(), re.M)
    assert readme_pin, "README.md has no `pip install torch==...` line"
    pin = readme_pin.group(1)
    assert f"pip install --quiet {pin}" in (REPO / ".ci" / "run").read_text()
    build_stages = [s for s in _dockerfile_stages() if s["name"].endswith("-build")]
    assert {s["name"] for s in build_stages} == {"cpu-build", "gpu-build"}
    for stage in build_stages:
        runs = [args for keyword, args in stage["instructions"] if keyword == "RUN"]
        torch_at = next(i for i, r in enumerate(runs) if r.startswith(f"pip install {pin}"))
        project_at = next(i for i, r in enumerate(runs) if re.match(r"pip install \"?\.", r))
        assert torch_at < project_at, stage["name"]
        assert "[dev]" not in " ".join(runs)
    cpu_runs = [a for k, a in _stage("cpu-build")["instructions"] if k == "RUN"]
    assert "pip install ." in cpu_runs  # the project, no extras
    gpu_runs = " ".join(a for k, a in _stage("gpu-build")["instructions"] if k == "RUN")
    assert 'pip install ".[gpu]"' in gpu_runs
    assert _dockerfile_args()["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert _stage("gpu-build")["base"] == _stage("gpu")["base"] == "${CUDA_IMAGE}"


def test_dockerfile_runtime_stages_are_non_root_with_healthcheck_and_no_build_tools():
    stages = _dockerfile_stages()
    assert stages[-1]["name"] == "cpu", "a plain `docker build .` must give the CPU image"
    for name in ("cpu", "gpu"):
        stage = _stage(name)
        keywords = [k for k, _ in stage["instructions"]]
        user = [a for k, a in stage["instructions"] if k == "USER"]
        assert user and user[-1].split(":")[0] not in ("root", "0"), name
        assert keywords.index("USER") < keywords.index("CMD"), name
        health = [a for k, a in stage["instructions"] if k == "HEALTHCHECK"]
        assert len(health) == 1 and "/healthz" in health[0] and "python" in health[0], name
        assert "curl" not in health[0] and "wget" not in health[0]
        cmd = [a for k, a in stage["instructions"] if k == "CMD"]
        assert json.loads(cmd[-1]) == ["python", "-m", "service"], name
        runs = " ".join(a for k, a in stage["instructions"] if k == "RUN")
        for tool in ("build-essential", "gcc", "g++", "pip install", "python3-venv", "-dev "):
            assert tool not in runs, f"{name}: {tool} in the runtime stage"
        copies = [a for k, a in stage["instructions"] if k == "COPY"]
        assert any(a.startswith(f"--from={name}-build /opt/venv ") for a in copies), name
        env = _dockerfile_env(stage)
        assert env["INSPECT_HOST"] == "0.0.0.0"
        expose = [a for k, a in stage["instructions"] if k == "EXPOSE"]
        assert expose == [env["INSPECT_PORT"]], name


def test_dockerfile_ships_the_default_model_and_its_onnx_graphs():
    from models.runtime.select import DEFAULT_MODEL_PATH

    assert DEFAULT_MODEL_PATH.is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"models" = \[[^\]]*"weights/\*"', pyproject), "weights not package data"
    for name in ("cpu", "gpu"):
        build = [a for k, a in _stage(f"{name}-build")["instructions"] if k in ("COPY", "RUN")]
        assert "models ./models" in build
        export = next(a for a in build if "scripts/export_onnx.py" in a)
        out_dir = re.search(r"--out-dir (\S+)", export).group(1)
        env = _dockerfile_env(_stage(name))
        onnx_copy = next(
            a
            for k, a in _stage(name)["instructions"]
            if k == "COPY" and a.startswith(f"--from={name}-build") and out_dir in a
        )
        assert onnx_copy.split()[-1] == env["INSPECT_ONNX_DIR"]
        assert "--chown=inspector:inspector" in onnx_copy  # the exporter writes mode 0600
        assert env["INSPECT_ONNX_CACHE_DIR"].startswith("/var/cache/inspector")


def test_dockerfile_environment_names_are_settings():
    valid = _setting_env_names()
    for name in ("cpu", "gpu"):
        for key in _dockerfile_env(_stage(name)):
            if key.startswith("INSPECT_") or key == "REDIS_URL":
                assert key in valid, f"{name}: ENV {key} is not a setting of the service"


# --------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_services_volumes_healthchecks_profiles():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"redis", "inspector", "inspector-gpu", "prometheus", "grafana"}

    redis = services["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command and "--requirepass" in command
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    assert "test" in redis["healthcheck"] and "ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis, "Redis stays on the compose network"

    for name in SERVICE_NAMES:
        svc = services[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert svc["build"]["context"] == "."
        assert any(p.endswith(":8000") for p in svc["ports"]), name
        assert "command" not in svc and "entrypoint" not in svc  # the image's one process
    assert services["inspector"]["build"]["target"] == "cpu"
    assert "profiles" not in services["inspector"]
    gpu = services["inspector-gpu"]
    assert gpu["build"]["target"] == "gpu" and gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name, svc in services.items():
        if name not in SERVICE_NAMES:
            assert "profiles" not in svc, f"{name} must start with a plain `docker compose up`"

    declared = set(compose["volumes"])
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_compose_service_environment_names_are_settings():
    valid = _setting_env_names()
    assert {"REDIS_URL", "INSPECT_PORT", "INSPECT_REDIS_PASSWORD", "INSPECT_ONNX_DIR"} <= valid
    for name in SERVICE_NAMES:
        env = _env(_compose()["services"][name])
        unknown = sorted(set(env) - valid)
        assert not unknown, f"{name}: {unknown} are not settings of the service"


def test_compose_environment_gives_valid_settings_and_the_redis_password(monkeypatch):
    from models.runtime.select import RuntimeSettings
    from service.store import store_settings

    services = _compose()["services"]
    redis_password = _env(services["redis"])["REDIS_PASSWORD"]
    assert redis_password
    for name in SERVICE_NAMES:
        for key in [k for k in os.environ if k.startswith("INSPECT_")]:
            monkeypatch.delenv(key)
        monkeypatch.delenv("REDIS_URL", raising=False)
        env = {**_dockerfile_env(_stage(services[name]["build"]["target"])), **_env(services[name])}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = ServiceSettings()
        assert settings.host == "0.0.0.0" and settings.port == 8000
        assert settings.open_mode  # no keys given to compose: open mode, logged loudly
        store = store_settings(settings)
        assert store is not None, "compose must use the redis container, not an embedded store"
        parts = urllib.parse.urlsplit(store.url)
        assert (parts.hostname, parts.port, parts.password) == ("redis", 6379, redis_password)
        runtime = RuntimeSettings()
        assert str(runtime.onnx_dir) == env["INSPECT_ONNX_DIR"]
        assert str(runtime.onnx_cache_dir) == env["INSPECT_ONNX_CACHE_DIR"]


def test_compose_writable_paths_match_the_image():
    services = _compose()["services"]
    uid = re.search(r"--uid (\d+)", " ".join(a for _, a in _stage("cpu")["instructions"]))
    for name in SERVICE_NAMES:
        svc = services[name]
        env = _dockerfile_env(_stage(svc["build"]["target"]))
        assert svc["read_only"] is True
        tmpfs = {entry.split(":")[0]: entry for entry in svc["tmpfs"]}
        cache = tmpfs[env["INSPECT_ONNX_CACHE_DIR"]]
        assert f"uid={uid.group(1)}" in cache
        # graceful shutdown fits in the stop grace period
        assert int(svc["stop_grace_period"].rstrip("s")) > ServiceSettings().shutdown_timeout_s
    gpu_env = _dockerfile_env(_stage("gpu"))
    assert any(
        v.endswith(":" + gpu_env["INSPECT_ONNX_DIR"]) for v in services["inspector-gpu"]["volumes"]
    )


# --------------------------------------------------------------------------------------------
# Prometheus, alerts, Grafana provisioning


def test_prometheus_scrapes_the_compose_services():
    config = _prometheus()
    compose = _compose()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "inspector"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (dns,) = job["dns_sd_configs"]
    assert tuple(dns["names"]) == SERVICE_NAMES
    assert str(dns["port"]) == _dockerfile_env(_stage("cpu"))["INSPECT_PORT"]
    for name in SERVICE_NAMES:
        assert name in compose["services"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./service/monitoring/prometheus:/etc/prometheus:ro" in mounts


def test_alert_rules_cover_the_obvious_failures():
    rules = _alerts()
    names = {rule["alert"] for rule in rules}
    assert {
        "InspectorDown",
        "InspectorHighErrorRate",
        "InspectorSlowInspections",
        "PromptStoreUnreachable",
        "RejectRateJump",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule.get("for"), rule["alert"]
        promql_names(rule["expr"])  # balanced, no stray variables
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    assert 'job="inspector"' in exprs["InspectorDown"]
    assert "histogram_quantile(0.99" in exprs["InspectorSlowInspections"]
    assert "inspect_prompt_store_up" in exprs["PromptStoreUnreachable"]


def test_grafana_provisioning_matches_compose_and_dashboard():
    compose = _compose()
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    (datasource,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    url = urllib.parse.urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and "prometheus" in compose["services"]
    assert url.port == int(compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1])
    (provider,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "inspection.yml").read_text()
    )["providers"]
    assert mounts["./service/monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./service/monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert _env(grafana)["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"

    dashboard = _dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_dashboard_covers_what_the_issue_asks_for():
    used: set[str] = set()
    for _, expr in _dashboard_exprs():
        used |= promql_names(expr)[0]
    assert {
        "inspect_http_requests_total",  # request rate and error rate
        "inspect_http_request_duration_seconds_bucket",  # latency p50/p95/p99
        "inspect_stage_duration_seconds_bucket",  # stage latencies
        "inspect_queue_depth",
        "inspect_batch_size_bucket",
        "inspect_verdicts_total",  # reject share by namespace
        "inspect_detections_total",  # detections by class
        "inspect_prompt_store_version",
        "inspect_prompt_store_classes",
        "inspect_backend_info",
    } <= used


def test_promql_reader():
    metrics, matched, grouping = promql_names(
        'sum by (namespace) (rate(a_total{verdict="reject", namespace=~"$namespace"}'
        "[$__rate_interval] offset 5m)) / on (namespace) b and histogram_quantile(0.9, c_bucket)"
    )
    assert metrics == {"a_total", "b", "c_bucket"}
    assert matched == {"a_total": {"verdict", "namespace"}}
    assert grouping == {"namespace"}
    with pytest.raises(AssertionError):
        promql_names("sum(rate(x[5m])")


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_checks_config_rules_alert_tests_and_dashboard_queries(tmp_path):
    def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> None:
        done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    promtool("check", "config", "prometheus.yml")
    promtool("check", "rules", "alerts.yml")
    promtool("test", "rules", "alerts.test.yml")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _grafana_substituted(expr)}
        for i, (_, expr) in enumerate(_dashboard_exprs())
    ]
    (tmp_path / "dashboard_rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)


# --------------------------------------------------------------------------------------------
# against a live service


@pytest.fixture(scope="module")
def live_service(
    tmp_path_factory: pytest.TempPathFactory, redis_server
) -> Iterator[ServiceProcess]:
    """`python -m service` with the embedded default model (what the image serves), with every
    labelled metric given a value: prompts registered, a reject, a pass, a refused image."""
    from models.runtime.select import DEFAULT_MODEL_PATH

    env = {
        "REDIS_URL": redis_server.url,
        "INSPECT_MODEL_PATH": str(DEFAULT_MODEL_PATH),
        "INSPECT_INSPECT_API_KEYS": INSPECT_KEY,
        "INSPECT_ADMIN_API_KEYS": ADMIN_KEY,
        "INSPECT_THREADS": "1",
        "INSPECT_BATCH_AUTOTUNE": "false",
        "INSPECT_LOG_FORMAT": "text",
    }
    proc = ServiceProcess(env, tmp_path_factory.mktemp("deploy")).start()
    try:
        proc.wait_ready()
        _traffic(proc, "deploy-" + uuid.uuid4().hex[:8], register=True)
        yield proc
    finally:
        proc.terminate()


def _traffic(proc: ServiceProcess, namespace: str, register: bool = False) -> None:
    with proc.client() as client:
        if register:
            for k in (1, 2):
                files = {
                    "image": ("p.jpg", (SAMPLES / f"scratch_prompt_{k}.jpg").read_bytes()),
                    "mask": ("m.png", (SAMPLES / f"scratch_prompt_{k}_mask.png").read_bytes()),
                }
                res = client.post(
                    f"/v1/namespaces/{namespace}/prompts",
                    files=files,
                    data={"class_name": "scratch"},
                )
                assert res.status_code == 201, res.text
        verdicts = set()
        for name in ("query_scratch.jpg", "query_ok.jpg"):
            res = client.post(
                "/v1/inspect",
                params={"namespace": namespace, "score_threshold": 0.1, "mask_format": "none"},
                content=(SAMPLES / name).read_bytes(),
            )
            assert res.status_code == 200, res.text
            verdicts.add(res.json()["verdict"])
        assert verdicts == {"pass", "reject"}
        res = client.post("/v1/inspect", params={"namespace": namespace}, content=b"no image")
        assert res.status_code == 415


def _exported(proc: ServiceProcess) -> dict[str, set[str]]:
    """Sample name -> label names, from the live /metrics."""
    text = httpx.get(proc.url + "/metrics", timeout=10).text
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_every_metric_and_label_in_dashboard_and_alerts_is_exported(live_service):
    exported = _exported(live_service)
    target_labels = _target_labels()
    exported["up"] = set()  # Prometheus's own series for every target
    problems = []
    for where, expr in _dashboard_exprs() + _alert_exprs():
        metrics, matched, grouping = promql_names(expr)
        available = set(target_labels)
        for metric in metrics:
            if metric not in exported:
                problems.append(f"{where}: {metric} is not in /metrics")
                continue
            available |= exported[metric]
        for metric, labels in matched.items():
            extra = labels - exported.get(metric, set()) - target_labels
            if extra:
                problems.append(f"{where}: {metric} has no label {sorted(extra)}")
        if grouping - available:
            problems.append(f"{where}: grouping by unknown labels {sorted(grouping - available)}")
    assert not problems, "\n".join(problems)
    # the Info metric the "backend in use" panel shows carries the backend's name
    assert {"backend", "device"} <= exported["inspect_backend_info"]


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian: prometheus)")
def test_a_real_prometheus_scraping_the_service_answers_every_dashboard_query(
    live_service, tmp_path
):
    """The dashboard shows data once traffic flows: each query returns at least one series."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "inspector",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{live_service.port}"],
                        "labels": {"service": "inspector"},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        res = httpx.get(base + "/query", params={"query": expr}, timeout=10).json()
        assert res["status"] == "success", res
        return res["data"]["result"]

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if query('up{job="inspector"} == 1'):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(
                "Prometheus never scraped the service:\n"
                + (tmp_path / "prometheus.log").read_text()[-2000:]
            )
        _traffic(live_service, "deploy-prom-" + uuid.uuid4().hex[:8], register=True)
        time.sleep(3)  # a few scrapes after the traffic, so rates see it
        empty = [
            where for where, expr in _dashboard_exprs() if not query(_grafana_substituted(expr))
        ]
        assert not empty, f"queries with no data: {empty}"
        rules = httpx.get(base + "/rules", timeout=10).json()["data"]["groups"]
        unhealthy = [
            (r["name"], r.get("lastError"))
            for g in rules
            for r in g["rules"]
            if r["health"] == "err"
        ]
        assert not unhealthy
    finally:
        server.terminate()
        server.wait(10)
        log.close()
