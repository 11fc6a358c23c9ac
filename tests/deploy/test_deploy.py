"""The two commands and the deployment files: `make demo` end to end, `check --deploy` with
the documented environment, the compose file and the systemd units."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deploy


def _env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / "deploy" / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_make_demo_runs_every_sample_and_every_url_answers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TEST_"))}
    env.update({"DEMO_SAMPLES": "3", "DEMO_EXIT_WHEN_READY": "1", "DEMO_READY_TIMEOUT": "240",
                "API_PORT": str(port), "DEVSTACK_TIME_SCALE": "0.02"})
    env.pop("REDIS_URL", None)  # tests.settings rewrote it; the demo picks its own database
    result = subprocess.run(["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "All samples are running." in out
    printed = re.findall(r"^  (Admin|API docs|Reconciler|Servers \(API\)):\s+(http\S+)$", out,
                         re.M)
    assert len(printed) == 4, out[-3000:]
    for label, _ in printed:
        assert re.search(rf"^  {re.escape(label)}\s+200 ok$", out, re.M), (label, out[-3000:])
    assert re.search(r"Admin login:\s+admin / \S+", out)
    for name in ("devstack", "api", "worker-lifecycle", "worker-repair", "worker-edge",
                 "worker-notify", "beat"):
        assert f"stopped {name} (pid" in out  # everything it started, stopped by pid


def test_production_settings_pass_check_deploy_with_the_documented_env():
    env = {**os.environ, **_env_example(), "SECRET_KEY": os.urandom(32).hex() + "Zz-9!x",
           "DJANGO_SETTINGS_MODULE": "zlh.settings_production"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy",
                             "--fail-level", "WARNING"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in {**os.environ, **_env_example()}.items() if k != "SECRET_KEY"}
    env["DJANGO_SETTINGS_MODULE"] = "zlh.settings_production"
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_env_example_documents_every_setting():
    source = (REPO / "zlh" / "settings.py").read_text() + \
        (REPO / "zlh" / "settings_production.py").read_text()
    names = set(re.findall(r"env\.\w+\(\s*['\"]([A-Z][A-Z0-9_]+)['\"]", source))
    assert len(names) > 60
    documented = set(_env_example())
    assert names - documented == set(), f"undocumented: {sorted(names - documented)}"


def test_compose_file_is_valid():
    path = REPO / "deploy" / "compose.yaml"
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        env = {**os.environ, "MARIADB_PASSWORD": "x"}
        (REPO / "deploy" / "zlh.env").write_text("SECRET_KEY=x\n")
        try:
            result = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"],
                                    env=env, capture_output=True, text=True, timeout=60)
        finally:
            (REPO / "deploy" / "zlh.env").unlink()
        assert result.returncode == 0, result.stderr
        return
    # No Docker here: check the structure the compose specification requires of us.
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    assert {"mariadb", "redis", "migrate", "api", "beat", "worker-lifecycle", "worker-repair",
            "worker-edge", "worker-notify"} <= set(services)
    for name, svc in services.items():
        assert set(svc) <= {"image", "build", "command", "environment", "env_file", "ports",
                            "volumes", "healthcheck", "restart", "depends_on", "deploy",
                            "stop_grace_period"}, name
        assert "image" in svc or "build" in svc, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] in ("service_healthy",
                                                             "service_started"), name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert services["beat"]["deploy"]["replicas"] == 1
    for queue in ("lifecycle", "repair", "edge", "notify"):
        assert services[f"worker-{queue}"]["command"][5] == queue
    assert set(doc["volumes"]) == {"mariadb-data"}
    assert (REPO / "deploy" / "Dockerfile").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    """`systemd-analyze verify` needs the programs to exist: point /opt/zlh at this checkout."""
    for unit in (REPO / "deploy" / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/zlh", str(REPO)).replace(
            "/etc/zlh/zlh.env", str(tmp_path / "zlh.env")).replace("User=zlh", "User=root") \
            .replace("Group=zlh", "Group=root")
        name = unit.name.replace("@.service", "@lifecycle.service")
        (tmp_path / name).write_text(text)
    (tmp_path / "zlh.env").write_text("SECRET_KEY=x\n")
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 3
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "zlh" in line and "Failed to" not in line.split(":", 1)[0]]
    assert result.returncode == 0, result.stdout + result.stderr
    assert problems == [], problems
