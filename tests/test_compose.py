"""docker-compose.yml, Dockerfile and .dockerignore: valid, and wired the way the docs say.

There is no container engine on the CI machines, so nothing is started here: the compose file
is validated by the compose binary itself (`docker compose config` or Debian's docker-compose
1.29; CI installs the `docker-compose` apt package) and its structure is checked as YAML.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from workshop import emulator as checkout_emulator

REPO = Path(__file__).resolve().parent.parent
WEBHOOK_PATH = "web:5000/api/webhook/stripe"
PRODUCT_BUILD = {"context": ".", "target": "app"}


def _compose_command() -> list[str]:
    """Find a compose implementation, or fail loudly: a skipped check is a missing check."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("no compose binary: install it with `apt-get install -y docker-compose`")


def _render(*extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the file as compose itself resolves it (interpolated, merged, validated)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SECRET_"))}
    with tempfile.TemporaryDirectory() as tmp:
        # An empty --env-file: a developer's .env must not change what is validated.
        empty = Path(tmp, "empty.env")
        empty.touch()
        compose = [*_compose_command(), "-f", "docker-compose.yml", "--env-file", str(empty)]
        result = subprocess.run(
            [*compose, *extra, "config"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**clean, **(env or {})},
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return _render()


def test_compose_validates_the_file(rendered: dict[str, Any]) -> None:
    assert set(rendered["services"]) == {
        "postgres",
        "redis",
        "stripe-mock",
        "migrate",
        "db-logins",
        "web",
        "workers",
        "emulator",
        "stripe-cli",
    }


def test_compose_validates_the_stripe_profile() -> None:
    config = _render("--profile", "stripe", env={"STRIPE_API_KEY": "sk_test_cli"})
    assert config["services"]["stripe-cli"]["environment"]["STRIPE_API_KEY"] == "sk_test_cli"


def test_postgres_is_healthchecked_and_migrate_waits_for_it(raw: dict[str, Any]) -> None:
    services = raw["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    migrate = services["migrate"]
    assert migrate["command"] == ["flask", "--app", "webapp", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "@postgres:5432/" in migrate["environment"]["DATABASE_URL"]


def test_web_serves_gunicorn_after_migrations(raw: dict[str, Any]) -> None:
    web = raw["services"]["web"]
    script = web["command"][-1]
    assert "exec gunicorn --bind 0.0.0.0:5000" in script
    assert "'webapp:create_app()'" in script
    assert "--config gunicorn.conf.py" in script  # request line and header limits
    assert web["depends_on"] == {
        "db-logins": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    logins = raw["services"]["db-logins"]
    assert logins["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert "flask --app webapp db-logins" in logins["command"][-1]
    # the app never connects as the superuser that migrates
    assert web["environment"]["DATABASE_URL"].startswith("postgresql://tokenbill_web:")
    assert web["environment"]["WEBHOOK_DATABASE_URL"].startswith("postgresql://tokenbill_stripe:")
    # password hashes through their own login (0031), with its own password, as db-logins made it
    assert web["environment"]["AUTH_DATABASE_URL"].startswith(
        "postgresql://tokenbill_signin:${SIGNIN_DB_PASSWORD:-signin-dev-only}@postgres:5432/"
    )
    assert logins["environment"]["SIGNIN_DB_PASSWORD"] == "${SIGNIN_DB_PASSWORD:-signin-dev-only}"
    assert "@postgres:5432/" in web["environment"]["DATABASE_URL"]
    assert web["build"] == raw["services"]["migrate"]["build"] == PRODUCT_BUILD


def _web_environment(rendered: dict[str, Any], service: str = "web", **env: str) -> dict[str, str]:
    """Run a service's start script with its program swapped for `env`; return what the
    program (gunicorn for web, the workers' supervisor) would see."""
    web = rendered["services"][service]
    script = web["command"][-1].replace("$$", "$")  # compose's escape, undone as compose does
    program = {"web": "exec gunicorn", "workers": "exec flask --app webapp workers"}[service]
    assert script.count(program) == 1
    script = script.split(program)[0] + "exec env"
    base = {k: str(v) for k, v in web["environment"].items()}
    result = subprocess.run(
        [*web["command"][:-1], script],
        env={"PATH": "/usr/bin:/bin", **base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_web_uses_the_emulator_without_a_stripe_key(rendered: dict[str, Any]) -> None:
    env = _web_environment(rendered)
    assert env["STRIPE_SECRET_KEY"] == "sk_test_emulator"
    assert env["STRIPE_API_BASE"] == "http://emulator:12112"
    assert env["PAYMENTS_SIMULATED"] == "1"
    # Both ends of the webhook share one secret.
    emulator_env = rendered["services"]["emulator"]["environment"]
    assert env["STRIPE_WEBHOOK_SECRET"] == emulator_env["STRIPE_WEBHOOK_SECRET"]


def test_web_uses_real_stripe_with_a_key(rendered: dict[str, Any]) -> None:
    env = _web_environment(
        rendered, STRIPE_SECRET_KEY="sk_test_real", STRIPE_WEBHOOK_SECRET="whsec_cli"
    )
    assert env["STRIPE_SECRET_KEY"] == "sk_test_real"
    assert env["STRIPE_API_BASE"] == ""  # the SDK's default: api.stripe.com
    assert env["STRIPE_WEBHOOK_SECRET"] == "whsec_cli"
    assert env["PAYMENTS_SIMULATED"] == ""


def test_workers_run_the_supervisor_as_the_workers_login(raw: dict[str, Any]) -> None:
    """Never the superuser: tokenbill_workers may SET ROLE to tokenbill_notifier and
    tokenbill_sweeper only (webapp/ops/db_logins.py GROUPS), the password db-logins gave it."""
    workers = raw["services"]["workers"]
    assert workers["command"][-1].rstrip().endswith("exec flask --app webapp workers")
    assert workers["build"] == PRODUCT_BUILD
    assert workers["restart"] == "unless-stopped"  # a dead supervisor is started again
    assert workers["depends_on"] == {"db-logins": {"condition": "service_completed_successfully"}}
    url = workers["environment"]["DATABASE_URL"]
    assert url.startswith(
        "postgresql://tokenbill_workers:${WORKERS_DB_PASSWORD:-workers-dev-only}@"
    )
    logins = raw["services"]["db-logins"]["environment"]
    assert logins["WORKERS_DB_PASSWORD"] == "${WORKERS_DB_PASSWORD:-workers-dev-only}"
    assert "ports" not in workers
    for alert in ("ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET"):
        assert alert in workers["environment"]


@pytest.mark.parametrize(
    "env", [{}, {"STRIPE_SECRET_KEY": "sk_test_real", "STRIPE_WEBHOOK_SECRET": "w"}]
)
def test_workers_and_web_make_the_same_stripe_choice(
    rendered: dict[str, Any], env: dict[str, str]
) -> None:
    """The top-up loop charges through the Stripe the web app takes payments from."""
    stripe = ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET", "PAYMENTS_SIMULATED")
    web = _web_environment(rendered, **env)
    workers = _web_environment(rendered, "workers", **env)
    assert {k: web.get(k) for k in stripe} == {k: workers.get(k) for k in stripe}
    assert workers["DATABASE_URL"].startswith("postgresql://tokenbill_workers:workers-dev-only@")


def test_emulator_runs_in_the_default_profile_and_posts_to_web(raw: dict[str, Any]) -> None:
    emulator = raw["services"]["emulator"]
    assert "profiles" not in emulator
    command = emulator["command"]
    assert command[:3] == ["python", "-m", "workshop.emulator"]
    args = checkout_emulator.build_parser().parse_args(command[3:])
    assert args.webhook_url == f"http://{WEBHOOK_PATH}"
    assert (args.host, args.port) == ("0.0.0.0", 12112)
    assert args.public_url == "http://localhost:12112"  # what the browser on the host opens
    assert emulator["ports"] == ["127.0.0.1:12112:12112"]


def test_stripe_cli_forwards_to_web_only_in_its_profile(raw: dict[str, Any]) -> None:
    cli = raw["services"]["stripe-cli"]
    assert cli["image"].startswith("stripe/stripe-cli")
    assert cli["profiles"] == ["stripe"]
    assert cli["command"] == ["listen", "--forward-to", WEBHOOK_PATH]
    assert "STRIPE_API_KEY" in cli["environment"]
    profiled = {name for name, svc in raw["services"].items() if "profiles" in svc}
    assert profiled == {"stripe-cli"}


def test_two_web_workers_share_rate_limits_in_redis(raw: dict[str, Any]) -> None:
    """memory:// under `--workers 2` would let every limit through twice."""
    services = raw["services"]
    assert "--workers 2" in services["web"]["command"][-1]
    assert services["web"]["environment"]["RATELIMIT_STORAGE_URI"] == "redis://redis:6379/0"
    assert services["redis"]["build"] == "docker/redis"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "ports" not in services["redis"]  # only the compose network reaches it
    dockerfile = (REPO / "docker" / "redis" / "Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in dockerfile
    assert "apt-get install -y --no-install-recommends redis-server" in dockerfile
    assert "\nUSER redis\n" in dockerfile


def test_stripe_mock_listens_on_12111(raw: dict[str, Any]) -> None:
    mock = raw["services"]["stripe-mock"]
    assert mock["image"].startswith("stripe/stripe-mock")
    assert any(port.endswith(":12111") for port in mock["ports"])


def _dockerfile_stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions by stage name (comments and blank lines dropped), in
    order: the last stage is what `docker build .` makes."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1] if " AS " in line else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        current.append(line)
    return stages


def _copied(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines if line.startswith("COPY ")}


def test_dockerfile_installs_requirements_and_drops_root() -> None:
    product = _dockerfile_stages()["product"]
    assert product[0] == "FROM python:3.11-slim AS product"
    assert "RUN pip install -r requirements.txt" in product
    users = [line.split()[1] for line in product if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # what the app's commands import: gunicorn, migrate, db-logins, workers
    for needed in ("webapp", "frontend", "db", "scripts"):
        assert needed in _copied(product)


def test_the_default_image_is_the_product_without_the_workshop(raw: dict[str, Any]) -> None:
    """The workshop (emulator, fault injection, benches) is dev-only: the image `docker build .`
    makes, and compose's app services, hold none of it; only the emulator's image does."""
    stages = _dockerfile_stages()
    names = list(stages)
    assert names[-1] == "app" and stages["app"] == ["FROM product AS app"]
    for stage in ("product", "app"):
        assert not any("workshop" in line for line in stages[stage] if not line.startswith("FROM"))
    assert stages["workshop"][0] == "FROM product AS workshop"
    assert "workshop" in _copied(stages["workshop"])
    for name, service in raw["services"].items():
        build = service.get("build")
        if not isinstance(build, dict) or build.get("context") != ".":
            continue
        expected = "workshop" if name == "emulator" else "app"
        assert build == {**PRODUCT_BUILD, "target": expected}, name
    assert raw["services"]["emulator"]["image"] != raw["services"]["web"]["image"]


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = (REPO / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", ".data", ".git"):
        assert entry in entries
