"""docker-compose.yml is the production shape; it can't run here (no Docker engine), so this
parses it and checks services, images, ports, env wiring, the schema job, the UI's settings,
the optional collector and the worker command."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml


def compose(repo_root: Path) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((repo_root / "docker-compose.yml").read_text())


def env(service: dict) -> dict[str, str]:  # type: ignore[type-arg]
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def version(image: str) -> tuple[int, ...]:
    return tuple(int(part) for part in image.split(":")[1].split("."))


def script(service: dict) -> str:  # type: ignore[type-arg]
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_services_and_images(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    assert set(services) == {
        "temporal-db",
        "temporal-schema",
        "temporal",
        "temporal-namespace",
        "temporal-ui",
        "egis-db",
        "worker",
        "worker-next",
        "otel-collector",
    }
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    for db in ("temporal-db", "egis-db"):
        assert services[db]["image"].startswith("postgres:")
    for name, service in services.items():
        if "image" in service:
            assert not service["image"].endswith(":latest") and ":" in service["image"], f"{name}: pin the image"
        # temporalio/auto-setup is deprecated: the plain server image, the schema by the admin tools
        assert "auto-setup" not in service.get("image", ""), name
    server = services["temporal"]["image"].split(":")[1]
    for job in ("temporal-schema", "temporal-namespace"):
        assert services[job]["image"] == f"temporalio/admin-tools:{server}", "admin tools match the server"


def test_temporal_runs_on_its_own_postgresql(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    for name in ("temporal", "temporal-schema"):
        temporal = env(services[name])
        assert temporal["DB"] == "postgres12" and temporal["POSTGRES_SEEDS"] == "temporal-db", name
        assert temporal["POSTGRES_USER"] == env(services["temporal-db"])["POSTGRES_USER"], name
    assert "7233:7233" in services["temporal"]["ports"]
    assert env(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "8233:8080" in services["temporal-ui"]["ports"]


def test_schema_is_set_up_by_the_admin_tools_before_the_server_starts(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    assert version(services["temporal"]["image"]) >= (1, 29, 1)  # Worker Versioning needs >= 1.29.1
    schema = services["temporal-schema"]
    setup = script(schema)
    for step in ("temporal-sql-tool", "--plugin postgres12", " create", "setup-schema -v 0.0", "update-schema -d"):
        assert step in setup, step
    assert "temporal_visibility" in setup and "/etc/temporal/schema/postgresql/v12/" in setup
    assert schema["depends_on"]["temporal-db"]["condition"] == "service_healthy"
    assert services["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    # the namespace and the search attributes come from a one-shot job too; the worker only checks them
    namespace = services["temporal-namespace"]
    assert namespace["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert "temporal operator namespace create" in script(namespace)
    for name in ("BotId", "Symbol", "Exchange", "PositionSide", "PositionStatus"):
        assert f"--name {name} --type Keyword" in script(namespace), name
    worker = services["worker"]
    assert worker["depends_on"]["temporal-namespace"]["condition"] == "service_completed_successfully"
    assert env(worker)["EGIS_REGISTER_SEARCH_ATTRIBUTES"] == "false"


def test_ui_is_recent_with_explicit_write_actions_and_auth_placeholders(repo_root: Path) -> None:
    ui = compose(repo_root)["services"]["temporal-ui"]
    assert version(ui["image"]) >= (2, 40, 0), "updates (2.34.4), current details (2.35), user metadata (2.40)"
    ui_env = env(ui)
    assert ui_env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "false"
    # the operator's close path stays: the request_close update and the close signal
    assert ui_env["TEMPORAL_WORKFLOW_UPDATE_DISABLED"] == "false"
    assert ui_env["TEMPORAL_WORKFLOW_SIGNAL_DISABLED"] == "false"
    for action in ("TERMINATE", "CANCEL", "RESET"):
        assert ui_env[f"TEMPORAL_WORKFLOW_{action}_DISABLED"] == "true", action
    assert ui_env["TEMPORAL_BATCH_ACTIONS_DISABLED"] == "true"
    for setting in ("ENABLED", "PROVIDER_URL", "CLIENT_ID", "CLIENT_SECRET", "CALLBACK_URL"):
        assert f"TEMPORAL_AUTH_{setting}" in ui_env, setting
    assert ui_env["TEMPORAL_AUTH_CLIENT_SECRET"].startswith("${"), "the secret comes from the environment"


def test_worker_is_wired_to_the_app_database_and_temporal(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    worker = services["worker"]
    worker_env = env(worker)
    db = urlsplit(worker_env["DATABASE_URL"])
    assert db.scheme == "postgresql" and db.hostname == "egis-db" and db.port == 5432
    assert db.username == env(services["egis-db"])["POSTGRES_USER"]
    assert db.path == "/" + env(services["egis-db"])["POSTGRES_DB"]
    host, port = worker_env["TEMPORAL_ADDRESS"].split(":")
    assert host == "temporal" and port == "7233"
    assert worker_env["TEMPORAL_NAMESPACE"] == "default"
    assert worker["deploy"]["replicas"] >= 2, "several worker replicas"
    assert worker["build"] == "." and (repo_root / "Dockerfile").exists()
    assert set(worker["depends_on"]) == {"egis-db", "temporal", "temporal-namespace"}
    # Worker Versioning: one deployment name, the image tag as the build id
    tag = worker["image"].split(":", 1)[1]
    assert worker_env["EGIS_BUILD_ID"] == tag and worker_env["EGIS_DEPLOYMENT_NAME"]
    # secrets come from mounted files named by account reference, never from the compose file
    assert any(v.endswith(worker_env["EGIS_ACCOUNTS_DIR"] + ":ro") for v in worker["volumes"])
    assert not any("API_KEY" in k or "SECRET" in k for k in worker_env)


def test_a_rollouts_next_version_is_the_same_worker_with_its_own_build_id(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    nxt = services["worker-next"]
    assert nxt["extends"] == {"service": "worker"} and nxt["profiles"] == ["next"]
    tag = nxt["image"].split(":", 1)[1]
    assert nxt["environment"]["EGIS_BUILD_ID"] == tag != services["worker"]["image"].split(":", 1)[1]
    assert "${EGIS_NEXT_VERSION" in tag


def test_optional_otel_collector_behind_a_profile(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    collector = services["otel-collector"]
    assert collector["profiles"] == ["otel"], "off unless `--profile otel`"
    assert {"4317", "4318"} <= set(collector["expose"])
    worker_env = env(services["worker"])
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in worker_env and worker_env["OTEL_SERVICE_NAME"] == "egis-worker"
    config = yaml.safe_load(compose(repo_root)["configs"]["otel-collector-config"]["content"])
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    # the image installs the otel extra, which pyproject pins
    assert '".[otel]"' in (repo_root / "Dockerfile").read_text()
    extra = re.search(r"^otel = \[(.*?)\]", (repo_root / "pyproject.toml").read_text(), re.M | re.S)
    assert extra is not None
    pins = re.findall(r'"([\w-]+)==[\d.]+"', extra.group(1))
    assert set(pins) == {"opentelemetry-sdk", "opentelemetry-exporter-otlp"}


def test_worker_command_is_the_readmes(repo_root: Path) -> None:
    command = " ".join(compose(repo_root)["services"]["worker"]["command"])
    readme = (repo_root / "README.md").read_text()
    assert f"`{command}`" in readme, f"README must show the worker command `{command}`"
    dockerfile = (repo_root / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M)
    assert cmd is not None and " ".join(p.strip().strip('"') for p in cmd.group(1).split(",")) == command
    for needed in ("egis", "workflows", "activities", "worker.py"):
        assert needed in dockerfile
