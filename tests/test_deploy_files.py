"""docker-compose.yml is the production shape; it can't run here (no Docker engine), so this
parses it and checks services, images, ports, env wiring and the worker command."""

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


def test_services_and_images(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    assert set(services) == {"temporal-db", "temporal", "temporal-ui", "egis-db", "worker"}
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    for db in ("temporal-db", "egis-db"):
        assert services[db]["image"].startswith("postgres:")
    for name, service in services.items():
        if "image" in service:
            assert not service["image"].endswith(":latest") and ":" in service["image"], f"{name}: pin the image"


def test_temporal_runs_on_its_own_postgresql(repo_root: Path) -> None:
    services = compose(repo_root)["services"]
    temporal = env(services["temporal"])
    assert temporal["DB"] == "postgres12" and temporal["POSTGRES_SEEDS"] == "temporal-db"
    assert temporal["POSTGRES_USER"] == env(services["temporal-db"])["POSTGRES_USER"]
    assert "7233:7233" in services["temporal"]["ports"]
    assert env(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "8233:8080" in services["temporal-ui"]["ports"]


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
    assert worker["deploy"]["replicas"] >= 2, "several worker replicas"
    assert worker["build"] == "." and (repo_root / "Dockerfile").exists()
    assert set(worker["depends_on"]) == {"egis-db", "temporal"}
    # secrets come from mounted files named by account reference, never from the compose file
    assert any(v.endswith(worker_env["EGIS_ACCOUNTS_DIR"] + ":ro") for v in worker["volumes"])
    assert not any("API_KEY" in k or "SECRET" in k for k in worker_env)


def test_worker_command_is_the_readmes(repo_root: Path) -> None:
    command = " ".join(compose(repo_root)["services"]["worker"]["command"])
    readme = (repo_root / "README.md").read_text()
    assert f"`{command}`" in readme, f"README must show the worker command `{command}`"
    dockerfile = (repo_root / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M)
    assert cmd is not None and " ".join(p.strip().strip('"') for p in cmd.group(1).split(",")) == command
    for needed in ("egis", "workflows", "activities", "worker.py"):
        assert needed in dockerfile
