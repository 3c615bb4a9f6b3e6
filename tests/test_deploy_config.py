"""deploy/: the systemd unit, the nginx site and the switch's own logic.

Fast checks, no server involved: `systemd-analyze verify` of the unit, `nginx
-t` of the site in a private prefix, the upstream file format, the switch's
settings, and its rollback when nginx rejects the configuration.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy_helpers import rig

# -- systemd unit ------------------------------------------------------------


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, repeated keys kept in order."""
    section = ""
    directives = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.append((section, key.strip(), value.strip()))
    return directives


def service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for section, key, value in unit_directives(rig.UNIT.read_text()):
        if section == "Service":
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_one_instance_per_port() -> None:
    service = service_settings()
    assert service["ExecStart"] == [
        "/opt/hobotnica/.venv/bin/hobotnica serve --host 127.0.0.1 --port %i"
    ]
    assert "HOBOTNICA_PORT=%i" in service["Environment"]
    assert service["EnvironmentFile"] == ["/etc/hobotnica/hobotnica.env"]
    assert service["User"] == ["hobotnica"]
    assert service["Restart"] == ["on-failure"]


def test_unit_lets_running_jobs_finish_on_stop() -> None:
    service = service_settings()
    # SIGTERM to the app only; its jobs are left to it until the timeout.
    assert service["KillMode"] == ["mixed"]
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    shutdown_timeout = 1800  # DESIGN §2 default, also set by the unit
    assert f"HOBOTNICA_SHUTDOWN_TIMEOUT={shutdown_timeout}" in service["Environment"]
    kill_grace = 5  # HOBOTNICA_KILL_GRACE default of the app
    assert int(service["TimeoutStopSec"][0]) > shutdown_timeout + kill_grace + 30


def test_unit_is_sandboxed_but_jobs_can_build() -> None:
    service = service_settings()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }.items():
        assert service.get(key) == [value], key
    assert "/var/lib/hobotnica" in service["ReadWritePaths"][0].split()
    # Settings that would break builds run by jobs, or the other instance.
    for key in ("MemoryDenyWriteExecute", "SystemCallFilter", "RemoveIPC"):
        assert key not in service, key


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    binary, reason = rig.ensure_systemd_analyze()
    if binary is None:
        pytest.skip(f"systemd-analyze is not available: {reason}")
    return binary


def verify_unit(systemd_analyze: str, unit_dir: Path, name: str) -> tuple[int, str]:
    done = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(unit_dir / name)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_PAGER": ""},
        check=False,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def test_unit_passes_systemd_analyze_verify(
    systemd_analyze: str, tmp_path: Path
) -> None:
    # First a trivial unit: if even that cannot be verified, this container
    # cannot run the check at all (and only then is it skipped).
    (tmp_path / "probe.service").write_text(
        "[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n"
    )
    code, output = verify_unit(systemd_analyze, tmp_path, "probe.service")
    if code != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {output.strip()}")

    # verify checks that ExecStart is executable: point it at this venv's
    # console script (or its python) instead of /opt/hobotnica.
    executable = Path(sys.executable).with_name("hobotnica")
    if not executable.exists():
        executable = Path(sys.executable)
    text = rig.UNIT.read_text()
    assert text.count("/opt/hobotnica/.venv/bin/hobotnica") == 1
    (tmp_path / "hobotnica@.service").write_text(
        text.replace("/opt/hobotnica/.venv/bin/hobotnica", str(executable))
    )
    code, output = verify_unit(systemd_analyze, tmp_path, "hobotnica@8081.service")
    assert code == 0, output
    # Unknown keys and bad values are only warnings: fail on any of them.
    assert "hobotnica@" not in output, output


# -- nginx site --------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    binary, reason = rig.ensure_nginx()
    if binary is None:
        pytest.skip(f"nginx is not available: {reason}")
    return binary


def test_site_proxies_as_documented() -> None:
    text = rig.SITE_CONF.read_text()
    directives = {
        " ".join(line.strip().rstrip(";").split())
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for expected in (
        "include /etc/hobotnica/upstream.conf",
        "client_max_body_size 26m",
        "keepalive_timeout 0",
        "proxy_pass http://hobotnica",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "proxy_set_header X-Forwarded-Proto $scheme",
        "proxy_set_header X-Forwarded-Host $http_host",
        "proxy_set_header X-Request-ID $hobotnica_request_id",
        "proxy_buffering off",
        "proxy_read_timeout 3700s",
        "proxy_next_upstream error timeout http_503 non_idempotent",
    ):
        assert expected in directives, expected


def test_site_config_passes_nginx_t(nginx_binary: str, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.conf"
    upstream.write_bytes(rig.UPSTREAM_CONF.read_bytes())
    nginx = rig.Nginx(nginx_binary, tmp_path / "nginx", upstream)
    done = nginx.test_config()
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_site_config_with_switched_upstream_passes_nginx_t(
    nginx_binary: str, tmp_path: Path
) -> None:
    switch = rig.load_switch()
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(switch.render_upstream(8082, 8081))
    done = rig.Nginx(nginx_binary, tmp_path / "nginx", upstream).test_config()
    assert done.returncode == 0, done.stderr


# -- the upstream file -------------------------------------------------------


@pytest.fixture
def switch() -> ModuleType:
    return rig.load_switch()


def test_shipped_upstream_file_is_what_the_switch_writes(switch: ModuleType) -> None:
    assert rig.UPSTREAM_CONF.read_text() == switch.render_upstream(8081, 8082)
    assert switch.parse_active_port(rig.UPSTREAM_CONF.read_text()) == 8081
    assert switch.parse_active_port(switch.render_upstream(8082, 8081)) == 8082


def test_active_port_is_the_server_without_backup(switch: ModuleType) -> None:
    text = textwrap.dedent(
        """\
        # server 127.0.0.1:9999;  (a comment)
        upstream hobotnica {
            server 127.0.0.1:8082 backup;
            server 127.0.0.1:8081;
        }
        """
    )
    assert switch.parse_active_port(text) == 8081
    assert switch.parse_active_port("upstream h { server 127.0.0.1:8082; }\n") == 8082


@pytest.mark.parametrize(
    "text",
    [
        "",
        "upstream hobotnica { }\n",
        "upstream h {\n server 127.0.0.1:8081 backup;\n}\n",
        "upstream h {\n server 127.0.0.1:8081;\n server 127.0.0.1:8082;\n}\n",
    ],
)
def test_unusable_upstream_file_is_refused(switch: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="exactly one server line"):
        switch.parse_active_port(text)


def test_replace_file_keeps_mode_and_leaves_no_temp_file(
    switch: ModuleType, tmp_path: Path
) -> None:
    target = tmp_path / "upstream.conf"
    target.write_text("old\n")
    target.chmod(0o640)
    switch.replace_file(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [path.name for path in tmp_path.iterdir()] == ["upstream.conf"]


# -- settings ----------------------------------------------------------------


def test_defaults_drive_systemd_and_system_nginx(switch: ModuleType) -> None:
    config = switch.Config.from_env({})
    assert config.upstream_file == Path("/etc/hobotnica/upstream.conf")
    assert config.ports == (8081, 8082)
    assert config.nginx_cmd == ("nginx",)
    assert config.instance_cmd is None
    assert switch.instance_commands(config, "start", 8082) == [
        ["systemctl", "enable", "--quiet", "hobotnica@8082.service"],
        ["systemctl", "start", "hobotnica@8082.service"],
    ]
    assert switch.instance_commands(config, "stop", 8081) == [
        ["systemctl", "disable", "--quiet", "hobotnica@8081.service"],
        ["systemctl", "stop", "--no-block", "hobotnica@8081.service"],
    ]


def test_commands_and_ports_come_from_the_environment(switch: ModuleType) -> None:
    config = switch.Config.from_env(
        {
            "HOBOTNICA_PORTS": "9001,9002",
            "HOBOTNICA_INSTANCE_CMD": "/usr/local/bin/instance --flag",
            "HOBOTNICA_NGINX_CMD": "nginx -p '/srv/my nginx' -c conf",
            "HOBOTNICA_HEALTH_TIMEOUT": "2.5",
        }
    )
    assert config.ports == (9001, 9002)
    assert config.health_timeout == 2.5
    assert config.nginx_cmd == ("nginx", "-p", "/srv/my nginx", "-c", "conf")
    assert switch.instance_commands(config, "stop", 9001) == [
        ["/usr/local/bin/instance", "--flag", "stop", "9001"]
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOBOTNICA_PORTS", "8081"),
        ("HOBOTNICA_PORTS", "8081 8081"),
        ("HOBOTNICA_PORTS", "8081 http"),
        ("HOBOTNICA_PORTS", "8081 70000"),
        ("HOBOTNICA_HEALTH_TIMEOUT", "soon"),
        ("HOBOTNICA_HEALTH_TIMEOUT", "0"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    done = run_switch({name: value, "HOBOTNICA_SWITCH_LOCK": str(tmp_path / "lock")})
    assert done.returncode == 2
    assert name in done.stderr


# -- the switch as a program, with stand-ins for nginx and the instances -----


def run_switch(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(rig.SWITCH), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Upstream file, lock, instance helper with stand-in servers; no nginx."""
    active, idle = rig.free_ports(2)
    run_dir = tmp_path / "instances"
    run_dir.mkdir()
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(rig.load_switch().render_upstream(active, idle))
    env = {
        "HOBOTNICA_UPSTREAM_FILE": str(upstream),
        "HOBOTNICA_SWITCH_LOCK": str(tmp_path / "switch.lock"),
        "HOBOTNICA_PORTS": f"{active} {idle}",
        "HOBOTNICA_INSTANCE_CMD": shlex.join(
            [sys.executable, str(rig.INSTANCE_HELPER)]
        ),
        "HOBOTNICA_NGINX_CMD": "true",
        "HOBOTNICA_HEALTH_TIMEOUT": "10",
        "DEPLOY_TEST_RUN_DIR": str(run_dir),
        "DEPLOY_TEST_SERVE_CMD": shlex.join(
            [sys.executable, str(rig.STANDIN), "serve", "--port", "{port}"]
        ),
        "STANDIN_DRAIN_SECONDS": "0.2",
        "ACTIVE": str(active),
        "IDLE": str(idle),
    }
    try:
        yield env
    finally:
        rig.kill_started(run_dir)


def test_missing_upstream_file_exits_2(stand_ins: dict[str, str]) -> None:
    Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"]).unlink()
    done = run_switch(stand_ins)
    assert done.returncode == 2
    assert "cannot read the upstream file" in done.stderr


def test_upstream_on_a_foreign_port_exits_2(stand_ins: dict[str, str]) -> None:
    Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"]).write_text(
        "upstream hobotnica { server 127.0.0.1:1; }\n"
    )
    done = run_switch(stand_ins)
    assert done.returncode == 2
    assert "not one of HOBOTNICA_PORTS" in done.stderr


@pytest.mark.parametrize(
    ("failing", "message"),
    [("-t", "[emerg] broken config"), ("-s", "[error] reload failed")],
)
def test_nginx_failure_rolls_back(
    stand_ins: dict[str, str], failing: str, message: str
) -> None:
    upstream = Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"])
    before = upstream.read_bytes()
    # A stand-in nginx that fails on `-t` or on `-s reload`.
    script = f'if [ "$1" = {failing} ]; then echo "nginx: {message}" >&2; exit 1; fi'
    stand_ins["HOBOTNICA_NGINX_CMD"] = shlex.join(["sh", "-c", script, "nginx"])
    done = run_switch(stand_ins)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr
    assert "nothing was switched" in done.stderr
    assert upstream.read_bytes() == before
    assert "restored" in done.stdout
    run_dir = Path(stand_ins["DEPLOY_TEST_RUN_DIR"])
    assert not (run_dir / f"{stand_ins['IDLE']}.pid").exists()  # stopped again


def test_idle_port_still_taken_is_refused(stand_ins: dict[str, str]) -> None:
    upstream = Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"])
    before = upstream.read_bytes()
    with rig.listening(int(stand_ins["IDLE"])):
        done = run_switch(stand_ins)
    assert done.returncode == 75
    assert f"port {stand_ins['IDLE']} is still taken" in done.stderr
    assert upstream.read_bytes() == before


def test_held_lock_refuses_a_switch(stand_ins: dict[str, str]) -> None:
    upstream = Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"])
    before = upstream.read_bytes()
    with open(stand_ins["HOBOTNICA_SWITCH_LOCK"], "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        done = run_switch(stand_ins)
    assert done.returncode == 75
    assert "another switch is running" in done.stderr
    assert upstream.read_bytes() == before
    assert not any(Path(stand_ins["DEPLOY_TEST_RUN_DIR"]).glob("*.pid"))


def test_switch_without_nginx_flips_the_upstream_file(
    stand_ins: dict[str, str],
) -> None:
    switch = rig.load_switch()
    active, idle = int(stand_ins["ACTIVE"]), int(stand_ins["IDLE"])
    done = run_switch(stand_ins)
    assert done.returncode == 0, done.stdout + done.stderr
    upstream = Path(stand_ins["HOBOTNICA_UPSTREAM_FILE"])
    assert upstream.read_text() == switch.render_upstream(idle, active)
    steps = [line for line in done.stdout.splitlines() if line.startswith("switch: ")]
    assert len(steps) >= 8, done.stdout
    status = run_switch(stand_ins, "status")
    assert status.returncode == 0
    assert f"port {idle} (active): 200" in status.stdout
