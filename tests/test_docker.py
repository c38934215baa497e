"""The Dockerfile and docker-compose.yml, tested as far as this machine allows (no Docker engine):
the compose file parses and wires Edgebridge to a KRaft Kafka consistently with routing.toml,
and the image's own ENTRYPOINT + CMD, environment and HEALTHCHECK run here for real against the
real broker, from a copy of the files the image copies."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from harness import REPO, free_port

from bridge.model.guard_settings import DEMO_SECRET

VENV_BIN = Path(sys.executable).parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the runtime stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [
        tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")
    ]
    last_from = max(i for i, ins in enumerate(instructions) if ins[0] == "FROM")
    return [(ins[0].upper(), ins[1] if len(ins) > 1 else "") for ins in instructions[last_from:]]


def instruction(name: str) -> list[str]:
    return [args for ins, args in dockerfile() if ins == name]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def shipped_ports() -> dict[str, int]:
    listeners = tomllib.loads((REPO / "routing.toml").read_text())["listeners"]
    return {name: listener["port"] for name, listener in listeners.items()}


def resolve(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_runtime_stage_is_slim_and_non_root() -> None:
    assert instruction("FROM")[0].endswith("-slim")
    [user] = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    [health] = instruction("HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == ["edgebridge", "health"]
    exposed = {int(p) for p in instruction("EXPOSE")[0].split()}
    assert exposed == set(shipped_ports().values())
    for copied in instruction("COPY"):
        if "--from" not in copied:
            assert (REPO / copied.split()[0]).exists(), copied


def test_compose_runs_edgebridge_beside_kraft_kafka() -> None:
    services = compose()["services"]
    kafka, bridge = services["kafka"], services["edgebridge"]
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "ZOOKEEPER" not in " ".join(env)
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    assert bridge["environment"]["KAFKA_BOOTSTRAP"] == advertised
    assert bridge["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in kafka
    published = {int(str(p).split(":")[-1].split()[0]) for p in bridge["ports"]}
    assert published == set(shipped_ports().values())
    assert "127.0.0.1:" in next(str(p) for p in bridge["ports"] if str(p).endswith("9090"))
    assert resolve(bridge["environment"]["EDGEBRIDGE_JWT_SECRET"]) == DEMO_SECRET
    assert bridge["command"] == json.loads(instruction("CMD")[0])
    # Longer than the workers' drain timeout, so Docker never SIGKILLs a draining bridge.
    assert int(bridge["stop_grace_period"].rstrip("s")) > 30


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """What the image's WORKDIR holds, with the shipped listener ports moved to free ones."""
    app = tmp_path / "app"
    app.mkdir()
    text = (REPO / "routing.toml").read_text()
    for port in shipped_ports().values():
        text = re.sub(rf"(?m)^port = {port}\b", f"port = {free_port()}", text)
    (app / "routing.toml").write_text(text)
    shutil.copytree(REPO / "schemas", app / "schemas")
    return app


def image_env(app: Path, kafka_bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEBRIDGE_", "KAFKA_"))}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    for line in instruction("ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", line):
            env[name] = value.replace("/app", str(app))
    for name, value in compose()["services"]["edgebridge"]["environment"].items():
        env[name] = resolve(value)
    env["KAFKA_BOOTSTRAP"] = kafka_bootstrap  # the compose file's "kafka:9092", here
    return env


def test_the_image_command_serves_and_its_healthcheck_passes(
    image_root: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = image_env(image_root, kafka_bootstrap)
    command = json.loads(instruction("ENTRYPOINT")[0]) + json.loads(instruction("CMD")[0])
    health = json.loads(instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    log_path = tmp_path / "image.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=image_root, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [*health, "--ready"], cwd=image_root, env=env, capture_output=True
            )
            if probe.returncode == 0:
                break
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert subprocess.run(health, cwd=image_root, env=env).returncode == 0
        logs = log_path.read_text()
        assert "guard.demo_secret" in logs  # the compose default is the public demo secret
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Down means unhealthy: the health check must fail, not hang or pass.
    assert subprocess.run(health, cwd=image_root, env=env, capture_output=True).returncode == 1
