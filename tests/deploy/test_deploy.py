"""The two commands and the deployment files: `make demo` end to end, `check --deploy` with
the documented environment, the compose file and the systemd units."""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_demo_processes import demo_env

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
    env = demo_env(DEMO_SAMPLES="3", DEMO_EXIT_WHEN_READY="1", DEMO_READY_TIMEOUT="240",
                   API_PORT=str(port))
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
    for game in ("demo-vanilla", "demo-fabric"):  # how players connect, as the API says it
        line = rf"^  {game}:\s+players join at {game}\.[a-z0-9.-]+$"
        assert re.search(line, out, re.M), out[-3000:]
    assert re.search(r"^  demo-ide:\s+IDE at http://127\.0\.0\.1:\d+/dev-\d+/$", out, re.M), \
        out[-3000:]
    # a working IDE URL with a token, and another token of its own opened it through the proxy
    assert re.search(r"^  demo-ide:\s+open the IDE \(once, before \S+\): "
                     r"http://127\.0\.0\.1:\d+/dev-\d+/\?zlh_ide_token=[\w.-]+$", out, re.M), \
        out[-3000:]
    assert re.search(r"^  demo-ide IDE\s+201 ok$", out, re.M), out[-3000:]
    for name in ("devstack", "api", "worker-lifecycle", "worker-repair", "worker-edge",
                 "worker-notify", "beat"):
        assert f"stopped {name} (pid" in out  # everything it started, stopped by pid


#: Every secret the running system needs; zlh.settings_production refuses to start without any.
REQUIRED_SECRETS = ("SECRET_KEY", "PROXMOX_TOKEN_SECRET", "AGENT_CREDENTIAL_KEYS",
                    "VELOCITY_FORWARDING_SECRET", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ZONE_ID",
                    "TECHNITIUM_TOKEN", "VELOCITY_BRIDGE_TOKEN")


def _production_env(**over: str) -> dict[str, str]:
    """The documented environment (deploy/env.example) with dummy values for its secrets."""
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    env.update(_env_example())
    env.update({name: f"dummy-{name.lower()}-{os.urandom(8).hex()}" for name in REQUIRED_SECRETS})
    env["SECRET_KEY"] = os.urandom(32).hex() + "Zz-9!x"
    env["AGENT_CREDENTIAL_KEYS"] = base64.urlsafe_b64encode(os.urandom(32)).decode()  # Fernet
    env["DATABASE_URL"] = f"mysql://zlh:{os.urandom(8).hex()}@10.0.0.5:3306/zlh"
    env["DJANGO_SETTINGS_MODULE"] = "zlh.settings_production"
    env["METRICS_DIR"] = tempfile.mkdtemp(prefix="zlh-metrics-")  # /run is the host's
    env.update(over)
    return env


@pytest.mark.parametrize("url", [None, "", "mysql://zlh:zlh@127.0.0.1:3306/zlh",
                                 "mysql://zlh:CHANGE-ME@10.0.0.5:3306/zlh",
                                 "mysql://zlh@10.0.0.5:3306/zlh"])
def test_production_settings_refuse_a_missing_or_placeholder_database_password(url):
    env = _production_env()
    if url is None:
        del env["DATABASE_URL"]
    else:
        env["DATABASE_URL"] = url
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    message = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in message and "DATABASE_URL" in message, message


@pytest.mark.parametrize("name", ["FIREWALL_CONTROL_PLANE_SOURCES", "FIREWALL_VELOCITY_SOURCES"])
@pytest.mark.parametrize("value, refused", [(None, True), ("", True), (" , ", True),
                                            ("10.0.0.5", False)])
def test_production_settings_refuse_a_firewall_that_would_shut_everyone_out(name, value,
                                                                          refused):
    env = _production_env()
    env.pop(name, None)
    if value is not None:
        env[name] = value
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode != 0) == refused, result.stdout + result.stderr
    if refused:
        message = result.stderr.strip().splitlines()[-1]
        assert "ImproperlyConfigured" in message and name in message, message
    # ...unless the firewall is off.
    off = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO,
                         env={**env, "PROXMOX_FIREWALL": "false"}, capture_output=True,
                         text=True, timeout=120)
    assert off.returncode == 0, off.stderr


@pytest.mark.parametrize("token, refused", [("short-token", True), ("m" * 40, False),
                                            ("", False)])
def test_production_settings_refuse_a_weak_metrics_token(token, refused):
    env = {**_production_env(), "METRICS_TOKEN": token}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode != 0) == refused, result.stdout + result.stderr
    if refused:
        assert "METRICS_TOKEN" in result.stderr.strip().splitlines()[-1]
        assert token not in result.stderr


def test_production_settings_pass_check_deploy_with_the_documented_env():
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy",
                             "--fail-level", "WARNING"], cwd=REPO, env=_production_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in _production_env().items() if k != "SECRET_KEY"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


@pytest.mark.parametrize("how", ["missing", "empty"])
@pytest.mark.parametrize("name", REQUIRED_SECRETS)
def test_production_settings_refuse_to_start_without_each_required_secret(name, how):
    env = _production_env()
    if how == "missing":
        del env[name]
    else:
        env[name] = "  "
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert name in message and "deploy/env.example" in message, message
    others = [n for n in REQUIRED_SECRETS if n != name and re.search(rf"\b{n}\b", message)]
    assert others == [], message  # names the one that is missing, not a list of suspects


def test_env_example_leaves_every_required_secret_empty_and_marked():
    """A copied example that nobody filled in must not start: the secrets are empty, each under a
    "REQUIRED" comment, and the production settings require exactly these."""
    lines = (REPO / "deploy" / "env.example").read_text().splitlines()
    for name in REQUIRED_SECRETS:
        at = lines.index(f"{name}=")  # present, and empty
        above = at - 1
        while lines[above].startswith(REQUIRED_SECRETS):  # secrets documented as a group
            above -= 1
        comments = []
        while lines[above].startswith("#"):
            comments.append(lines[above])
            above -= 1
        assert any("REQUIRED" in c for c in comments), (name, comments)
    required = re.findall(r'_required\("([A-Z0-9_]+)"\)',
                          (REPO / "zlh" / "settings_production.py").read_text())
    assert sorted(required) == sorted(REQUIRED_SECRETS)


def test_env_example_documents_every_setting():
    source = (REPO / "zlh" / "settings.py").read_text() + \
        (REPO / "zlh" / "settings_production.py").read_text()
    names = set(re.findall(r"env\.\w+\(\s*['\"]([A-Z][A-Z0-9_]+)['\"]", source))
    assert len(names) > 60
    documented = set(_env_example())
    assert names - documented == set(), f"undocumented: {sorted(names - documented)}"


def _compose_copy(tmp_path: Path) -> Path:
    """deploy/compose.yaml copied into tmp_path, its env_file pointing at a temporary file and
    its build context at this checkout: validating it never reads or writes deploy/zlh.env (an
    operator's real secrets may live there)."""
    env_file = tmp_path / "zlh.env"
    env_file.write_text("SECRET_KEY=x\n")
    text = (REPO / "deploy" / "compose.yaml").read_text()
    assert text.count("env_file: zlh.env") == 1 and text.count("context: ..") == 1
    text = text.replace("env_file: zlh.env", f"env_file: {env_file}") \
        .replace("context: ..", f"context: {REPO}")
    copy = tmp_path / "compose.yaml"
    copy.write_text(text)
    return copy


def test_compose_file_is_valid(tmp_path):
    path = REPO / "deploy" / "compose.yaml"
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        env = {**os.environ, "MARIADB_PASSWORD": "x"}
        result = subprocess.run(["docker", "compose", "-f", str(_compose_copy(tmp_path)),
                                 "config", "-q"], env=env, capture_output=True, text=True,
                                timeout=60)
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


FAKE_DOCKER = """#!{python}
# A stand-in for the docker CLI: `compose version` works; `compose -f FILE config` records the
# file it was given and checks, like docker does, that every env_file it names exists.
import json, os, sys
import yaml
args = sys.argv[1:]
if args[:2] == ["compose", "version"]:
    sys.exit(0)
compose = args[args.index("-f") + 1]
env_files = []
for svc in yaml.safe_load(open(compose))["services"].values():
    files = svc.get("env_file") or []
    env_files += [files] if isinstance(files, str) else files
env_files = [os.path.join(os.path.dirname(compose), f) for f in env_files]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "env_files": env_files}}) + "\\n")
sys.exit(0 if env_files and all(os.path.exists(f) for f in env_files) else 1)
"""


def test_compose_check_never_touches_an_operators_env_file(tmp_path, monkeypatch):
    """With docker compose on the PATH the check must validate a copy: an operator's
    deploy/zlh.env (here a planted one when none exists) stays byte for byte as it was."""
    import json

    real = REPO / "deploy" / "zlh.env"
    planted = not real.exists()
    if planted:
        real.write_text("OPERATOR_SECRET=keep-me-" + os.urandom(8).hex() + "\n")
    before = real.read_bytes(), real.stat().st_mtime_ns
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        docker = bin_dir / "docker"
        docker.write_text(FAKE_DOCKER.format(python=sys.executable))
        docker.chmod(0o755)
        log = tmp_path / "docker.log"
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        test_compose_file_is_valid(run_dir)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(calls) == 1, calls
        compose = Path(calls[0]["args"][calls[0]["args"].index("-f") + 1])
        assert compose.resolve() != (REPO / "deploy" / "compose.yaml").resolve()
        assert all(Path(f).resolve() != real.resolve() for f in calls[0]["env_files"]), calls
        assert real.exists(), "the check deleted deploy/zlh.env"
        assert (real.read_bytes(), real.stat().st_mtime_ns) == before, "deploy/zlh.env changed"
    finally:
        if planted and real.exists():
            real.unlink()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    """`systemd-analyze verify` needs the programs to exist: point /opt/zlh at this checkout."""
    for unit in (REPO / "deploy" / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/zlh", str(REPO)).replace(
            "/etc/zlh/zlh.env", str(tmp_path / "zlh.env")).replace("User=zlh", "User=root") \
            .replace("Group=zlh", "Group=root")
        name = unit.name.replace("-lifecycle@.service", "-lifecycle@1.service").replace(
            "@.service", "@repair.service")
        (tmp_path / name).write_text(text)
    (tmp_path / "zlh.env").write_text("SECRET_KEY=x\n")
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 4
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "zlh" in line and "Failed to" not in line.split(":", 1)[0]]
    assert result.returncode == 0, result.stdout + result.stderr
    assert problems == [], problems


def test_every_deployment_runs_each_queue_with_the_declared_pool():
    """Procfile, compose, the systemd units and `make demo` run each queue's workers with the
    pool, concurrency, environment and number of processes of zlh.celery.WORKER_POOLS /
    WORKER_ENV / WORKER_PROCESSES."""
    from zlh.celery import WORKER_ENV, WORKER_POOLS, WORKER_PROCESSES

    procfile = (REPO / "deploy" / "Procfile").read_text().splitlines()
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    unit = (REPO / "deploy" / "systemd" / "zlh-worker@.service").read_text()
    assert "Environment=ZLH_WORKER_POOL=prefork" in unit
    assert "Environment=ZLH_WORKER_CONCURRENCY=2" in unit
    assert "-P ${ZLH_WORKER_POOL} -c ${ZLH_WORKER_CONCURRENCY}" in unit
    assert "EnvironmentFile=-/etc/zlh/worker-%i.env" in unit
    demo = (REPO / "devstack" / "demo.py").read_text()
    assert "WORKER_POOLS[queue]" in demo and "env=WORKER_ENV.get(queue)" in demo
    assert "WORKER_PROCESSES.get(queue, 1)" in demo
    assert WORKER_PROCESSES["lifecycle"] >= 2
    for queue, (pool, concurrency) in WORKER_POOLS.items():
        env = WORKER_ENV.get(queue, {})
        processes = WORKER_PROCESSES.get(queue, 1)
        lines = [ln for ln in procfile if re.match(rf"worker-{queue}(-\d+)?:", ln)]
        assert len(lines) == processes, lines
        names = set()
        for line in lines:
            assert f"-Q {queue} -P {pool} " in line, line
            assert re.search(rf"-c (\$\{{\w+:-)?{concurrency}\b", line), line
            assert all(f"{k}={v}" in line for k, v in env.items()), line
            names.add(re.search(r"-n (\S+)", line).group(1))
        assert len(names) == processes, names  # each process its own node name
        service = compose[f"worker-{queue}"]
        cmd = service["command"]
        assert cmd[cmd.index("-P") + 1] == pool and cmd[cmd.index("-c") + 1] == str(concurrency)
        assert service.get("environment", {}) == env
        assert service.get("deploy", {}).get("replicas", 1) == processes
        if queue == "lifecycle":  # its own unit template, one instance per process
            own = (REPO / "deploy" / "systemd" / "zlh-worker-lifecycle@.service").read_text()
            assert f"-Q lifecycle -P {pool} -c ${{ZLH_LIFECYCLE_THREADS}}" in own
            assert f"Environment=ZLH_LIFECYCLE_THREADS={concurrency}" in own
            assert all(f"Environment={k}={v}" in own for k, v in env.items())
            assert "-n lifecycle%i@%H" in own
            continue
        assert (pool, concurrency, processes) == ("prefork", 2, 1) and not env, queue
        assert not (REPO / "deploy" / "systemd" / f"worker-{queue}.env").exists()
