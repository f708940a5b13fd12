"""The Docker files say what the README promises (issue 12, item 6). No Docker daemon is
needed: these read the files; `docker compose config` checks the compose file's syntax."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def _service(name: str) -> str:
    """The text of one top-level service block of docker-compose.yml."""
    match = re.search(rf"^  {name}:\n((?:    .*\n|\n)+)", COMPOSE, re.MULTILINE)
    assert match is not None, f"no service {name}"
    return match.group(1)


def test_the_image_carries_the_license_and_runs_as_a_non_root_user() -> None:
    copies = re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE)
    assert any("LICENSE" in line.split() for line in copies)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    # The last USER comes before the entry point: every command runs as that user.
    assert DOCKERFILE.rindex("USER ") < DOCKERFILE.index("ENTRYPOINT")


def test_kafka_keeps_its_data_on_a_volume() -> None:
    kafka = _service("kafka")
    log_dirs = re.search(r"KAFKA_LOG_DIRS: (\S+)", kafka)
    assert log_dirs is not None
    assert f"- kafka-data:{log_dirs.group(1)}" in kafka
    assert re.search(r"^  kafka-data:$", COMPOSE, re.MULTILINE)


def test_publish_is_a_one_shot_service_on_the_workers_data() -> None:
    publish = _service("publish")
    assert 'command: ["publish"]' in publish
    assert "- sieve-data:/data" in publish and "- sieve-data:/data" in _service("worker")
    assert "restart:" not in publish  # runs once and exits


def test_workers_get_a_key_file_made_once() -> None:
    assert '"keys", "new", "--exist-ok"' in _service("keys")
    worker = _service("worker")
    assert "keys:\n        condition: service_completed_successfully" in worker
    assert "- sieve-keys:/secrets:ro" in worker


def test_every_sieve_variable_the_compose_file_sets_is_a_setting() -> None:
    from streams.settings import Settings

    known = {f"SIEVE_{name.upper()}" for name in Settings.model_fields}
    variables = set(re.findall(r"^\s+(SIEVE_[A-Z0-9_]+):", COMPOSE, re.MULTILINE))
    assert "SIEVE_INTERNAL_REFERRER_HOSTS" in variables  # the facts' referrer class needs it
    assert variables <= known, sorted(variables - known)
