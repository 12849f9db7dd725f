"""compose.yaml and the Dockerfile agree with the package (SPEC section 7).

Docker is not needed: the files are parsed, Compose's variable interpolation is done
here, and every command, setting and runner they name is checked against the code.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_group

import scheduled_prompts.celery_app
from scheduled_prompts.celery_app import broker_config
from scheduled_prompts.cli import cli
from scheduled_prompts.cli.up import DEFAULT_RUNNER
from scheduled_prompts.runners import LogRunner, load_runner
from scheduled_prompts.settings import ENV_PREFIX, Settings, sentinel_target, settings_from_env
from support.redis_server import RedisServer, free_port, redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
APP_SERVICES = ("worker", "beat", "flower")
SPEC_TASKS = {
    "scheduled_prompts.tick",
    "scheduled_prompts.deliver",
    "scheduled_prompts.cleanup",
    "scheduled_prompts.hydrate",
}


# -- Compose's interpolation ---------------------------------------------------------


class MissingVariable(Exception):
    pass


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as Compose reads it with the variables ``env`` (``$$`` is a literal ``$``)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"invalid interpolation ${{{match['braced']}}} in {text!r}"
        name, op, arg = braced["name"], braced["op"] or "", braced["arg"] or ""
        value = env.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else str(value)
        if op.endswith("?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return _INTERPOLATION.sub(substitute, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """Every string value of ``node`` interpolated with ``env``."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


# -- Reading the files ---------------------------------------------------------------


def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The services as Compose runs them with ``env`` as the host's variables."""
    resolved = resolve(raw_compose()["services"], env or {})
    assert isinstance(resolved, dict)
    return resolved


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    """A Compose duration (``90s``, ``1m30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def celery_parts(args: list[str]) -> tuple[str | None, str, list[str]]:
    """``celery [-A app] SUBCOMMAND ARGS...`` as (app, subcommand, args)."""
    assert args[0] == "celery"
    app, i = None, 1
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-A", "--app"):
            app, i = args[i + 1], i + 2
        elif args[i].startswith("--app="):
            app, i = args[i].split("=", 1)[1], i + 1
        else:
            pytest.fail(f"unexpected celery option before the subcommand: {args[i]}")
    assert i < len(args), f"no celery subcommand in {args}"
    return app, args[i], args[i + 1 :]


def check_celery_command(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Fail unless ``args`` start a real Celery subcommand of our app: (name, options)."""
    app_name, sub, rest = celery_parts(args)
    assert app_name == "scheduled_prompts", f"{args}: needs -A scheduled_prompts"
    app = find_app(app_name)
    assert app is scheduled_prompts.celery_app.app
    assert sub in ("worker", "beat", "flower"), f"{args}: unexpected subcommand {sub}"
    assert sub in celery_group.commands, f"celery has no subcommand {sub!r}"
    if sub == "flower":
        # Flower registers itself through this entry point; the image installs the extra.
        assert "flower" in {e.name for e in entry_points(group="celery.commands")}
        from flower.options import options

        params = {}
        for arg in rest:
            name, sep, value = arg.removeprefix("--").partition("=")
            assert arg.startswith("--") and sep, f"flower option {arg!r}: use --name=value"
            option = options._options.get(name.replace("_", "-"))
            assert option is not None, f"flower has no option --{name}"
            params[name] = option.type(value)  # raises on a bad value
        return sub, params
    # Parse the options exactly as the celery CLI would (bad names or values raise).
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    return sub, celery_group.commands[sub].make_context(sub, list(rest), obj=obj).params


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped, continuations joined."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def dockerignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (or a folder above it) out of the context."""
    patterns = [
        p.strip().strip("/")
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pat) for pat in patterns for prefix in prefixes)


# -- compose.yaml ----------------------------------------------------------------------


def test_compose_parses_with_the_four_services_and_no_version_key() -> None:
    data = raw_compose()
    assert "version" not in data
    assert {"redis", "worker", "beat", "flower"} <= set(data["services"])


def test_plain_up_needs_no_variable_set() -> None:
    # Compose interpolates the whole file before applying profiles: one `${VAR:?}`,
    # even in the flower service, would stop `docker compose up` without that variable.
    try:
        services({})
    except MissingVariable as exc:
        pytest.fail(f"`docker compose up` would refuse to start without {exc}")


def test_celery_commands_start_real_subcommands_of_our_app() -> None:
    started = {
        name: check_celery_command(argv(svc["command"]))
        for name, svc in services().items()
        if argv(svc.get("command"))[:1] == ["celery"]
    }
    assert {name: sub for name, (sub, _) in started.items()} == {
        "worker": "worker",
        "beat": "beat",
        "flower": "flower",
    }
    assert started["worker"][1]["concurrency"] >= 1
    # The image runs as a user who cannot write to its working directory: beat's
    # schedule file (default: ./celerybeat-schedule) must go somewhere writable.
    assert str(started["beat"][1]["schedule"]).startswith("/tmp/")
    assert started["flower"][1] == {"address": "0.0.0.0", "port": 5555}


def test_celery_app_registers_the_spec_task_names() -> None:
    app = find_app("scheduled_prompts")
    app.loader.import_default_modules()  # what a worker does with the app's `include`
    assert set(app.tasks) >= SPEC_TASKS


def test_scheduled_prompts_commands_name_real_subcommands() -> None:
    """Service commands and `docker compose exec/run SERVICE ...` lines in comments."""
    svcs = services()
    commands = [
        argv(svc.get(key))
        for svc in svcs.values()
        for key in ("command", "entrypoint")
        if argv(svc.get(key))[:1] == ["scheduled-prompts"]
    ]
    for match in re.finditer(r"docker compose (?:exec|run) (\S+) ([^#\n]*)", COMPOSE.read_text()):
        assert match[1] in svcs, f"comment names unknown service {match[1]}"
        args = shlex.split(match[2])
        if args[:1] == ["scheduled-prompts"]:
            commands.append(args)
        elif args[:1] == ["celery"]:
            check_celery_command(args)
    assert commands, "expected at least the documented `scheduled-prompts doctor`"
    for args in commands:
        sub = next(a for a in args[1:] if not a.startswith("-"))
        assert sub in cli.commands, f"scheduled-prompts has no subcommand {sub!r}: {args}"


def test_scheduled_prompts_variables_are_real_settings_with_valid_values() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    raw = raw_compose()["services"]
    seen = set()
    for name, svc in services().items():
        for var, value in environment(svc).items():
            if not var.startswith(ENV_PREFIX):
                continue
            seen.add(var)
            field = var.removeprefix(ENV_PREFIX).lower()
            assert field in fields, f"{name}: {var} is not a setting"
            settings_from_env({var: value})  # the default Compose passes must parse
            if "${" not in environment(raw[name])[var]:
                settings_from_env({var: environment(raw[name])[var]})
    assert {"SCHEDULED_PROMPTS_REDIS_URL", "SCHEDULED_PROMPTS_RUNNER"} <= seen


def test_app_services_use_the_redis_service() -> None:
    svcs = services()
    for name in APP_SERVICES:
        url = urlsplit(settings_from_env(environment(svcs[name])).redis_url)
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379), name


def test_worker_runner_defaults_to_logrunner_and_can_be_overridden() -> None:
    runner = environment(services()["worker"])["SCHEDULED_PROMPTS_RUNNER"]
    assert runner == DEFAULT_RUNNER == "scheduled_prompts.runners:LogRunner"
    assert isinstance(load_runner(runner), LogRunner)
    mine = {"SCHEDULED_PROMPTS_RUNNER": "mybot.runners:Runner"}
    assert (
        environment(services(mine)["worker"])["SCHEDULED_PROMPTS_RUNNER"] == "mybot.runners:Runner"
    )


def test_redis_keeps_every_write_and_is_not_published() -> None:
    data = raw_compose()
    redis = services()["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    options = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") == "everysec"
    assert options.get("--maxmemory-policy") == "noeviction"
    volume, _, target = str(redis["volumes"][0]).partition(":")
    assert target == "/data" and volume in (data.get("volumes") or {})
    test = " ".join(argv(redis["healthcheck"]["test"]))
    assert "redis-cli ping" in test and "PONG" in test
    assert "ports" not in redis
    assert "profiles" not in redis


def test_flower_is_on_loopback_behind_auth_and_a_profile() -> None:
    flower = services()["flower"]
    raw = raw_compose()["services"]["flower"]
    assert flower.get("profiles"), "flower must only start when its profile is asked for"
    ports = flower.get("ports") or []
    assert ports
    for port in ports:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", port
        else:
            assert str(port).startswith("127.0.0.1:"), port
    assert environment(raw)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    for name in ("redis", "worker", "beat"):
        assert "profiles" not in services()[name], f"{name} must start by default"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize(
    ("host_value", "starts"),
    [
        (None, False),
        ("", False),
        ("admin", False),
        (":secret", False),
        ("admin:", False),
        ("admin:secret", True),
        ("admin:secret,ops:other", True),
    ],
)
def test_flower_refuses_to_start_without_basic_auth(host_value: str | None, starts: bool) -> None:
    # The host's variable goes through Compose's interpolation into the container's
    # environment, where the entrypoint decides whether Flower (here: a stand-in) runs.
    host = {} if host_value is None else {"FLOWER_BASIC_AUTH": host_value}
    flower = services(host)["flower"]
    container_env = {"PATH": os.environ["PATH"], **environment(flower)}
    stand_in = [sys.executable, "-c", "import os; print('flower', os.environ['FLOWER_BASIC_AUTH'])"]
    done = subprocess.run(
        [*argv(flower["entrypoint"]), *stand_in],
        env=container_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if starts:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"flower {host_value}"
    else:
        assert done.returncode != 0
        assert done.stdout == ""
        assert "FLOWER_BASIC_AUTH=user:password" in done.stderr


def test_worker_and_beat_come_back_and_wait_for_a_healthy_redis() -> None:
    svcs = services()
    for name in ("worker", "beat"):
        svc = svcs[name]
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert "healthcheck" in svcs["redis"]
    # Warm shutdown lets running deliveries finish: allow at least a lease's length.
    assert seconds(svcs["worker"]["stop_grace_period"]) >= Settings().lease_seconds


def test_worker_and_beat_health_checks_are_the_doctor_probes() -> None:
    svcs = services()
    probes = {}
    for name in ("worker", "beat"):
        test = argv(svcs[name]["healthcheck"]["test"])
        assert test[0] == "CMD", test
        args = test[1:]
        assert args[:2] == ["scheduled-prompts", "doctor"], args
        probes[name] = args[args.index("--probe") + 1]
        # The probe answers in well under a second; the timeout leaves room for a busy host.
        assert seconds(svcs[name]["healthcheck"]["timeout"]) >= 2
    assert probes == {"worker": "liveness", "beat": "readiness"}
    doctor = cli.commands["doctor"]
    choices = next(p for p in doctor.params if p.name == "probe").type.choices  # type: ignore[attr-defined]
    assert set(probes.values()) <= set(choices)


def test_exactly_one_beat() -> None:
    svcs = services()
    beats = [
        name
        for name, svc in svcs.items()
        if argv(svc.get("command"))[:1] == ["celery"]
        and celery_parts(argv(svc["command"]))[1] == "beat"
    ]
    assert beats == ["beat"]
    assert not {"-B", "--beat"} & set(argv(svcs["worker"]["command"]))
    assert (svcs["beat"].get("deploy") or {}).get("replicas", 1) == 1
    assert "scale" not in svcs["beat"]


def test_app_services_share_one_image_built_from_the_dockerfile() -> None:
    svcs = services()
    builds = {json.dumps(svcs[name]["build"], sort_keys=True) for name in APP_SERVICES}
    images = {svcs[name].get("image") for name in APP_SERVICES}
    assert len(builds) == 1 and len(images) == 1
    build = svcs["worker"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / name).resolve() == DOCKERFILE


# -- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_with_flower_and_celeryconfig() -> None:
    steps = dockerfile()
    froms = [args for instr, args in steps if instr == "FROM"]
    assert froms and re.match(r"python:3\.11([-.]|$)", froms[-1].split()[0])

    users = [args for instr, args in steps if instr == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")

    runs = " ".join(args for instr, args in steps if instr == "RUN")
    assert re.search(r"pip install [^&;]*--no-cache-dir[^&;]*\"?\.\[flower\]", runs)

    workdir, copied_to = "/", {}
    for instr, args in steps:
        if instr == "WORKDIR":
            workdir = os.path.join(workdir, args)
        elif instr == "COPY":
            *sources, dest = [a for a in args.split() if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the project"
                target = os.path.normpath(os.path.join(workdir, dest))
                copied_to[src.rstrip("/")] = target
    assert {"pyproject.toml", "README.md", "scheduled_prompts", "celeryconfig.py"} <= set(copied_to)
    # celeryconfig.py lands in the working directory the processes start in.
    assert copied_to["celeryconfig.py"] in (workdir, os.path.join(workdir, "celeryconfig.py"))

    cmd = [args for instr, args in steps if instr == "CMD"]
    assert cmd and check_celery_command(json.loads(cmd[-1]))[0] == "worker"

    for instr, args in steps:
        if instr in ("ENV", "ARG"):
            names = [item.split("=", 1)[0] for item in args.split()]
            for name in names:
                assert not re.search(r"SECRET|PASSWORD|TOKEN|AUTH", name, re.I), name


def test_dockerignore_keeps_the_sources_and_drops_local_state() -> None:
    for src in ("pyproject.toml", "README.md", "celeryconfig.py"):
        assert not dockerignored(src), src
    for path in (ROOT / "scheduled_prompts").rglob("*.py"):
        assert not dockerignored(path.relative_to(ROOT).as_posix()), path
    for local in (".venv", ".git", ".env", "celerybeat-schedule.dat"):
        assert dockerignored(local), local


# -- the ha profile: a replica and three sentinels -------------------------------------

SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def _options(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}


def sentinel_conf(service: Mapping[str, Any]) -> str:
    """The configuration a sentinel service writes at start (its heredoc)."""
    script = argv(service["command"])[-1]
    body = script.split("<<'CONF'\n", 1)[1].split("\nCONF\n", 1)[0]
    return body + "\n"


def documented_ha_url() -> str:
    found = re.search(r"SCHEDULED_PROMPTS_REDIS_URL=(redis\+sentinel://\S+)", COMPOSE.read_text())
    assert found, "compose.yaml shows the Sentinel URL of the ha profile"
    return found.group(1)


def test_the_ha_profile_adds_a_replica_of_redis_and_three_sentinels() -> None:
    svcs = services()
    for name in ("redis-replica", *SENTINELS):
        assert svcs[name]["profiles"] == ["ha"], name
    replica = argv(svcs["redis-replica"]["command"])
    at = replica.index("--replicaof")
    assert replica[at + 1 : at + 3] == ["redis", "6379"]
    for name, announced in (("redis", "redis"), ("redis-replica", "redis-replica")):
        options = _options(argv(svcs[name]["command"]))
        assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
        assert options["--maxmemory-policy"] == "noeviction"
        # Either node may be the primary: each announces the name the others resolve.
        assert options["--replica-announce-ip"] == announced
    volumes = {str(svcs[n]["volumes"][0]).partition(":")[0] for n in ("redis", "redis-replica")}
    assert len(volumes) == 2, "the replica keeps its own data"
    for name in SENTINELS:
        assert sentinel_conf(svcs[name]) == sentinel_conf(svcs["sentinel-1"])
        assert svcs[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_documented_sentinel_url_names_the_sentinels_and_the_service_they_watch() -> None:
    url = documented_ha_url()
    target = sentinel_target(url)
    assert target is not None
    assert target.sentinels == tuple((name, 26379) for name in SENTINELS)
    conf = sentinel_conf(services()["sentinel-1"])
    assert f"sentinel monitor {target.service} redis 6379 2\n" in conf
    assert "port 26379\n" in conf
    assert url in (ROOT / "docs" / "operations.md").read_text()
    # Every app service takes it (store, and broker through kombu's Sentinel transport).
    env = {"SCHEDULED_PROMPTS_REDIS_URL": url, "SCHEDULED_PROMPTS_MIN_REPLICAS": "1"}
    for name in APP_SERVICES:
        settings = settings_from_env(environment(services(env)[name]))
        assert settings.redis_url == url and settings.min_replicas == 1, name
        broker = broker_config(settings)
        assert broker["broker_transport_options"]["master_name"] == target.service
        assert broker["broker_url"].startswith("sentinel://sentinel-1:26379/0;"), name


def test_the_sentinel_configuration_runs_in_a_real_sentinel(tmp_path: Path) -> None:
    conf = sentinel_conf(services()["sentinel-1"])
    with RedisServer() as primary:
        port = free_port()
        local = conf.replace("port 26379", f"port {port}").replace(
            " redis 6379 ", f" 127.0.0.1 {primary.port} "
        )
        path = tmp_path / "sentinel.conf"
        path.write_text(local)
        proc = subprocess.Popen(
            [redis_server_binary(), str(path), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
        try:
            master = None
            for _ in range(200):
                try:
                    master = client.sentinel_master("scheduled-prompts")
                    break
                except redis.ConnectionError:
                    assert proc.poll() is None, f"sentinel refused the configuration:\n{local}"
                    time.sleep(0.05)
            assert master is not None
            assert (master["ip"], int(master["port"])) == ("127.0.0.1", primary.port)
            assert int(master["quorum"]) == 2
            assert int(master["down-after-milliseconds"]) == 5000
        finally:
            client.close()
            proc.terminate()
            proc.wait(10)


# -- the monitoring profile: exporter, Prometheus with the rules, Grafana -------------------


def _mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file or folder a bind mount brings in."""
    out = {}
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if source.startswith("./"):
            out[rest.split(":")[0]] = ROOT / source
    return out


def test_the_monitoring_profile_wires_exporter_prometheus_rules_and_grafana() -> None:
    svcs = services()
    for name in ("exporter", "prometheus", "grafana"):
        assert svcs[name]["profiles"] == ["monitoring"], name
    args = argv(svcs["exporter"]["command"])
    assert args[:2] == ["scheduled-prompts", "exporter"]
    ctx = cli.make_context("scheduled-prompts", args[1:], resilient_parsing=False)
    sub = cli.get_command(ctx, "exporter")
    assert sub is not None
    params = sub.make_context("exporter", args[2:]).params
    assert params["host"] == "0.0.0.0"
    prometheus = _mounts(svcs["prometheus"])
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"exporter:{params['port']}"]
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert prometheus["/etc/prometheus/rules.yml"] == ROOT / "deploy/prometheus/rules.yml"
    grafana = _mounts(svcs["grafana"])
    provider = yaml.safe_load(
        (grafana["/etc/grafana/provisioning"] / "dashboards/scheduled-prompts.yml").read_text()
    )
    board_dir = provider["providers"][0]["options"]["path"]
    assert (grafana[board_dir] / "scheduled-prompts.json").is_file()
    source = yaml.safe_load(
        (grafana["/etc/grafana/provisioning"] / "datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in svcs[name]["ports"]), name
    assert "ports" not in svcs["exporter"]
