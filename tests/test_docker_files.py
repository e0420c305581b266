"""Checks of deploy/docker/ that need no container engine: none runs where the tests do, so the images are never
built here. Instead, everything the files name is checked against the repository and the installed Flower: the
compose file parses and holds the demo's shape (one published port, read-only data, each hospital its own key,
policy and data), every build context, Dockerfile and COPY source exists and passes its ignore file, every module
and entry point they run exists, every flag they pass appears in that command's ``--help``, and the entry scripts
behave (the hospital's supervisor with stand-in processes; the demo's key and policy set-up for real).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from common.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
SCRIPTS = DOCKER / "bin"
RUN_CONFIG = DOCKER / "demo-run.toml"
BIN = Path(sys.executable).parent
DOCKERFILES = {"coordinator": DOCKER / "Dockerfile.coordinator", "hospital": DOCKER / "Dockerfile.hospital"}
GATE_MODULE = "deploy.hospital_exec"
"""The hospital's policy gate, which the hospital image runs beside its SuperNode."""
SUPERLINK_PORT = 8000
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
SERVICES = {"pki", "phantoms", "superlink", "register", *HOSPITALS, "submit"}
STATE_DIR = "/var/lib/fedmammo"
HELP_TIMEOUT_S = 60.0
ENV = {
    **os.environ,
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "COLUMNS": "200",  # rich's help boxes: no option name cut by the width
    "PYTHONPATH": os.pathsep.join((str(ROOT), os.environ.get("PYTHONPATH", ""))),
    "PATH": os.pathsep.join((str(SCRIPTS), str(BIN), os.environ.get("PATH", ""))),
}
_INVOCATION = re.compile(
    r"(?<![\w./$-])(flower-superlink|flower-supernode|flower-superexec|flwr|fedmammo|python3? -m [\w.]+)(?![\w.-])"
)
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _constants(path: Path) -> dict[str, str]:
    """Module-level string constants, read without importing the module (client/ imports PyTorch: seconds)."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.update((target.id, node.value.value) for target in node.targets if isinstance(target, ast.Name))
    return found


_CLIENT = {
    **_constants(ROOT / "client" / "site.py"),
    **_constants(ROOT / "client" / "budget.py"),
    **_constants(ROOT / "client" / "ledger_file.py"),
}
MANIFEST_KEY, SITE_NAME_KEY, CACHE_DIR_KEY, LEDGER_KEY = (
    _CLIENT[k] for k in ("MANIFEST_KEY", "SITE_NAME_KEY", "CACHE_DIR_KEY", "LEDGER_KEY")
)
MAX_EPSILON_KEY, MAX_DELTA_KEY, MIN_NOISE_KEY, ACCOUNTANT_KEY = (
    _CLIENT[k] for k in ("MAX_EPSILON_KEY", "MAX_DELTA_KEY", "MIN_NOISE_KEY", "ACCOUNTANT_KEY")
)
"""The SuperNode node-config keys the client reads (client/site.py, client/budget.py, client/ledger_file.py)."""


# ---- reading the files --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile(name: str) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped, as Docker reads them."""
    instructions, pending = [], ""
    for raw in DOCKERFILES[name].read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{DOCKERFILES[name]} ends inside a continued line"
    return instructions


def final_stage(name: str) -> list[Instruction]:
    instructions = dockerfile(name)
    last_from = max(i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM")
    return instructions[last_from:]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            key, _, value = instruction.args.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            values.update(token.split("=", 1) for token in shlex.split(instruction.args))  # type: ignore[misc]
    return values


def exec_form(name: str, keyword: str) -> list[str]:
    found = [i.args for i in final_stage(name) if i.keyword == keyword]
    assert found, f"{DOCKERFILES[name].name} has no {keyword}"
    value = json.loads(found[-1])
    assert isinstance(value, list), f"{DOCKERFILES[name].name}: {keyword} must be in exec form (JSON)"
    return value


def copies(name: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (COPY --from=... excluded)."""
    found = []
    for instruction in dockerfile(name):
        if instruction.keyword != "COPY":
            continue
        tokens = shlex.split(instruction.args)
        if any(token.startswith("--from") for token in tokens):
            continue
        tokens = [token for token in tokens if not token.startswith("--")]
        found.append((tokens[:-1], tokens[-1]))
    return found


def installed_scripts(name: str) -> set[str]:
    """Names of deploy/docker/bin scripts the image copies onto its PATH (/usr/local/bin)."""
    return {
        Path(source).name
        for sources, destination in copies(name)
        for source in sources
        if source.startswith("deploy/docker/bin/") and destination.rstrip("/") == "/usr/local/bin"
    }


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def image_of(name: str) -> str:
    dockerfile_path = (
        COMPOSE.parent / service(name)["build"]["context"] / service(name)["build"]["dockerfile"]
    ).resolve()
    return next(key for key, path in DOCKERFILES.items() if path.resolve() == dockerfile_path)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    kind: str
    subpath: str | None = None


def mounts(name: str) -> list[Mount]:
    found = []
    for volume in service(name).get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            found.append(Mount(source, target, "ro" in options, kind))
        else:
            subpath = (volume.get("volume") or {}).get("subpath")
            found.append(
                Mount(volume["source"], volume["target"], bool(volume.get("read_only")), volume["type"], subpath)
            )
    return found


def script_lines(path: Path) -> list[str]:
    """Logical lines of a shell script: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _cut_at_operator(text: str) -> str:
    """``text`` up to the first shell operator or comment outside quotes."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in ";&|)<>" or (char == "#" and index and text[index - 1].isspace()):
            return text[:index]
    return text


@dataclass(frozen=True)
class Invocation:
    where: str
    tokens: tuple[str, ...]

    @property
    def head(self) -> int:
        return 3 if self.tokens[0].startswith("python") else 1

    @property
    def module(self) -> str | None:
        return self.tokens[2] if self.head == 3 else None

    @property
    def flags(self) -> list[str]:
        return [m.group(0) for token in self.tokens if (m := _FLAG.fullmatch(token.split("=", 1)[0]))]

    @property
    def program(self) -> str:
        """The entry point or module: ``flwr``, ``deploy.pki``."""
        return self.module or self.tokens[0]

    def help_key(self) -> tuple[str, ...]:
        """The program and what precedes its first option (subcommands, positionals): what ``--help`` follows."""
        leading = []
        for token in self.tokens[self.head :]:
            if token.startswith("-"):
                break
            leading.append(token)
        return (self.program, *leading)


def invocations_in(text: str, where: str) -> Iterator[Invocation]:
    for match in _INVOCATION.finditer(text):
        try:
            tokens = shlex.split(_cut_at_operator(text[match.start() :]))
        except ValueError as exc:
            raise AssertionError(f"{where}: cannot split {text[match.start() :]!r}: {exc}") from exc
        yield Invocation(where, tuple(tokens))


@cache
def invocations() -> tuple[Invocation, ...]:
    """Every Flower, fedmammo and ``python -m`` command the Dockerfiles, compose file and scripts run."""
    found: list[Invocation] = []
    for name, path in DOCKERFILES.items():
        for instruction in dockerfile(name):
            if instruction.keyword in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
                args = instruction.args
                text = shlex.join(json.loads(args)) if args.startswith("[") else args
                found += invocations_in(text, f"{path.name}: {instruction.keyword}")
    for name, spec in compose()["services"].items():
        for key in ("command", "entrypoint"):
            if isinstance(spec.get(key), list):
                found += invocations_in(shlex.join(spec[key]), f"compose.yaml: {name}.{key}")
    for path in sorted(SCRIPTS.iterdir()):
        if "bash" in path.read_text(encoding="utf-8").splitlines()[0]:
            for line in script_lines(path):
                found += invocations_in(line, f"bin/{path.name}")
    return tuple(found)


# ---- running --help once per command ------------------------------------------------------


FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
"""Run as the installed binaries. Our own CLIs (argparse) answer ``--help`` in this process: no second start-up."""
IN_PROCESS = {"fedmammo": "simulations.cli"}
"""Console scripts whose ``main`` is called here, by module."""


def _flower_help(key: tuple[str, ...]) -> tuple[int, str]:
    command = (str(BIN / key[0]), *key[1:], "--help")
    result = subprocess.run(
        command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=HELP_TIMEOUT_S, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _python_help(key: tuple[str, ...]) -> tuple[int, str]:
    main = importlib.import_module(IN_PROCESS.get(key[0], key[0])).main
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = main([*key[1:], "--help"])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), output.getvalue()


def _help_is_runnable(invocation: Invocation) -> bool:
    if invocation.program in FLOWER:
        return (BIN / invocation.program).is_file()
    module = IN_PROCESS.get(invocation.program, invocation.program)
    return module.split(".")[0] in ("deploy", "simulations") and _module_exists(module)


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def flower_helps() -> Iterator[dict[tuple[str, ...], Future[tuple[int, str]]]]:
    """Each distinct Flower ``--help`` the files need, all started at once (seconds each)."""
    keys = {inv.help_key() for inv in invocations() if inv.flags and inv.program in FLOWER and _help_is_runnable(inv)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {key: pool.submit(_flower_help, key) for key in sorted(keys)}


# ---- the compose file ------------------------------------------------------------------------------------------------


def test_compose_parses_and_holds_the_demo_services() -> None:
    assert set(compose()["services"]) == SERVICES
    declared = set(compose().get("volumes") or {})
    for name in SERVICES:
        for mount in mounts(name):
            if mount.kind == "volume":
                assert mount.source in declared, f"{name}: volume {mount.source!r} is not declared"
            else:
                assert (COMPOSE.parent / mount.source).exists(), f"{name}: bind source {mount.source} is missing"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_builds_from_a_dockerfile_of_the_repository(name: str) -> None:
    build = service(name)["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT, f"{name}: the build context must be the repository root"
    assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} does not exist"
    images = {service(other)["image"] for other in SERVICES if image_of(other) == image_of(name)}
    assert images == {service(name)["image"]}, "the services built from one Dockerfile must share its image name"
    assert not any(service(o)["image"] in images for o in SERVICES if image_of(o) != image_of(name))


def test_only_the_superlink_publishes_a_port_and_only_8000_on_loopback() -> None:
    for name in SERVICES - {"superlink"}:
        assert "ports" not in service(name) and "expose" not in service(name), f"{name} must publish no port"
        assert service(name).get("network_mode") in (None, "none"), f"{name} must not share the host's network"
    published = [str(port).split(":") for port in service("superlink")["ports"]]
    assert [port[-1] for port in published] == [str(SUPERLINK_PORT)]
    assert all(port[0] == "127.0.0.1" for port in published if len(port) == 3), "bind the Control API to loopback"
    assert [i.args for i in final_stage("coordinator") if i.keyword == "EXPOSE"] == [str(SUPERLINK_PORT)]
    assert not [i for i in final_stage("hospital") if i.keyword == "EXPOSE"]


def test_data_keys_and_policy_are_mounted_read_only_and_each_hospital_sees_only_its_own() -> None:
    for name in SERVICES:
        for mount in mounts(name):
            if mount.target == "/data" or mount.target.startswith("/etc/fedmammo"):
                assert mount.read_only, f"{name}: {mount.target} must be mounted read-only"
            if mount.source in ("config", "phantoms") and not mount.read_only:
                writer = {"config": "pki", "phantoms": "phantoms"}[mount.source]
                assert (name, mount.target) == (writer, STATE_DIR), f"only {writer} may write {mount.source}"
    setup = service("pki")["command"]
    assert setup[:3] == ["demo-setup", STATE_DIR, "superlink"], "the server certificate must name the service"
    assert tuple(setup[3:]) == HOSPITALS
    sites = service("phantoms")["command"]
    assert sites[:2] == ["fedmammo", "phantoms"] and sites[sites.index("--out") + 1] == STATE_DIR
    site_dirs = {f"site_{i}" for i in range(int(sites[sites.index("--sites") + 1]))}
    seen_sites = set()
    for index, name in enumerate(HOSPITALS):
        by_target = {mount.target: mount for mount in mounts(name)}
        config, data, state = by_target["/etc/fedmammo"], by_target["/data"], by_target[STATE_DIR]
        assert (config.source, config.subpath) == ("config", name)
        assert data.source == "phantoms" and data.subpath in site_dirs
        assert state.kind == "volume" and not state.read_only and state.source == f"{name}-state"
        seen_sites.add(data.subpath)
        environment = service(name)["environment"]
        assert environment["FEDMAMMO_SITE_NAME"] == name
        assert environment["FEDMAMMO_NODE_KEY"] == f"/etc/fedmammo/{name}"
        assert environment["FEDMAMMO_SUPERLINK"] == f"superlink:{SUPERLINK_PORT}"
        assert len(seen_sites) == index + 1, "each hospital serves its own site"
    pki = {mount.target: mount for mount in mounts("superlink")}["/etc/fedmammo/pki"]
    assert pki.source == "config" and pki.subpath == "coordinator" and pki.read_only
    for name in ("register", "submit"):
        (operator,) = mounts(name)
        assert (operator.source, operator.subpath, operator.target) == ("config", "operator", "/etc/fedmammo/operator")


def test_services_start_in_order() -> None:
    def conditions(name: str) -> dict[str, str]:
        return {other: spec["condition"] for other, spec in service(name).get("depends_on", {}).items()}

    done, healthy = "service_completed_successfully", "service_healthy"
    assert conditions("superlink") == {"pki": done}
    assert conditions("register") == {"superlink": healthy}
    for name in HOSPITALS:
        assert conditions(name) == {"register": done, "phantoms": done}
    assert conditions("submit")["superlink"] == healthy
    assert service("submit")["profiles"] == ["submit"], "submit runs only on demand"
    assert service("superlink")["healthcheck"]["test"] == ["CMD", "superlink-healthcheck"]
    assert "superlink-healthcheck" in installed_scripts("coordinator")
    registered = service("register")["command"]
    assert registered[:2] == ["demo-operator", "register"]
    assert registered[2:] == [f"/etc/fedmammo/operator/{name}.pub" for name in HOSPITALS]


def test_every_command_the_services_run_is_in_their_image() -> None:
    for name in SERVICES:
        command = service(name).get("command") or exec_form(image_of(name), "CMD")
        program = command[0]
        assert (BIN / program).is_file() or program in installed_scripts(image_of(name)), (
            f"{name} runs {program!r}, which is neither an installed entry point nor a script its image copies"
        )
    for name in DOCKERFILES:
        entrypoint = exec_form(name, "ENTRYPOINT")
        if entrypoint[0] == "tini":
            assert any(i.keyword == "RUN" and "install" in i.args and " tini" in i.args for i in dockerfile(name))


# ---- the Dockerfiles ---------------------------------------------------------------------------------------------


def _ignore_allows(name: str) -> set[str]:
    """Top-level names the Dockerfile's own ignore file lets into the build context (an allow-list after ``*``)."""
    ignore = DOCKERFILES[name].with_name(DOCKERFILES[name].name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} keeps the .venv and data out of the build context"
    lines = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", f"{ignore.name} must start by excluding everything"
    return {pattern[1:].strip("/") for pattern in patterns if pattern.startswith("!")}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copy_source_exists_and_is_in_the_build_context(name: str) -> None:
    allowed = _ignore_allows(name)
    assert copies(name)
    for sources, _ in copies(name):
        for source in sources:
            assert list(ROOT.glob(source)), f"{DOCKERFILES[name].name}: COPY {source} matches nothing"
            assert source.split("/")[0] in allowed, f"{source} is excluded by the ignore file"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_image_python_satisfies_requires_python(name: str) -> None:
    instructions = dockerfile(name)
    images = {expand(i.args.split()[0], arg_defaults(instructions)) for i in instructions if i.keyword == "FROM"}
    assert len(images) == 1, f"build and runtime stages must share one base image, got {images}"
    version = re.fullmatch(r"python:(\d+\.\d+)-slim", images.pop())
    assert version, "an official python:X.Y-slim image"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert SpecifierSet(project["requires-python"]).contains(version.group(1))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_run_as_a_non_root_user_offline(name: str) -> None:
    stage = final_stage(name)
    users = [i.args for i in stage if i.keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = expand(users[-1], arg_defaults(stage)).split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    environment = env_values(stage)
    assert environment["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert environment["FLWR_TELEMETRY_ENABLED"] == "0"
    assert environment["HOME"] == STATE_DIR
    build = dockerfile(name)[: len(dockerfile(name)) - len(stage)]
    torch = [i.args for i in build if i.keyword == "RUN" and "TORCH_INDEX_URL" in i.args]
    assert torch and arg_defaults(build)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_superlink_command() -> None:
    command = exec_form("coordinator", "CMD")
    assert command[0] == "flower-superlink"
    assert "--insecure" not in command
    for flag in ("--enable-supernode-auth", "--disable-runtime-dependency-installation"):
        assert flag in command
    pki = "/etc/fedmammo/pki"
    values = {command[i]: command[i + 1] for i in range(1, len(command) - 1) if not command[i + 1].startswith("--")}
    assert values["--ssl-ca-certfile"] == f"{pki}/ca.crt"
    assert values["--ssl-certfile"] == f"{pki}/server.pem"
    assert values["--ssl-keyfile"] == f"{pki}/server.key"
    assert values["--database"].startswith(f"{STATE_DIR}/")
    assert (values["--host"], values["--port"]) == ("0.0.0.0", str(SUPERLINK_PORT))


def test_demo_run_config_is_a_valid_run_config() -> None:
    values = _flatten(tomllib.loads(RUN_CONFIG.read_text(encoding="utf-8")))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    known = set(_flatten(pyproject["tool"]["flwr"]["app"]["config"]))
    assert set(values) <= known, f"not in pyproject's run config: {sorted(set(values) - known)}"
    config = load_config(values)
    assert config.strategy.min_nodes == len(HOSPITALS) and config.federation.num_sites == len(HOSPITALS)
    assert str(config.output.run_dir).startswith(f"{STATE_DIR}/"), "the report must land in superlink-state"
    destinations = [d for sources, d in copies("coordinator") if "deploy/docker/demo-run.toml" in sources]
    assert destinations == ["/opt/fedmammo/demo-run.toml"]
    assert "/opt/fedmammo/demo-run.toml" in (SCRIPTS / "demo-operator").read_text(encoding="utf-8")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---- what the files run --------------------------------------------------------------------------------------------


def test_every_module_run_with_python_m_exists() -> None:
    modules = {inv.module for inv in invocations() if inv.module is not None}
    assert {"deploy.pki", "deploy.app_hash", "deploy.policy", "deploy.submit", GATE_MODULE} <= modules
    missing = sorted(m for m in modules - {GATE_MODULE} if not _module_exists(m))
    assert not missing, f"modules the container files run but that do not exist: {missing}"
    if not _module_exists(GATE_MODULE):
        pytest.skip(f"{GATE_MODULE} (the hospital's policy gate) is not in the tree yet; the hospital image runs it")


def test_every_flag_appears_in_that_commands_help(flower_helps: dict[tuple[str, ...], Future[Any]]) -> None:
    used = [inv for inv in invocations() if inv.flags]
    programs = {inv.program for inv in used}
    assert {"flower-superlink", "flower-supernode", "flwr", "fedmammo", "deploy.pki", GATE_MODULE} <= programs
    unchecked, problems, ours = [], [], {}
    for key in {inv.help_key() for inv in used if inv.program not in FLOWER and _help_is_runnable(inv)}:
        ours[key] = _python_help(key)  # meanwhile Flower's run in the background
    for inv in used:
        if not _help_is_runnable(inv):
            unchecked.append(f"{inv.where}: {inv.program}")
            continue
        key = inv.help_key()
        code, text = flower_helps[key].result() if inv.program in FLOWER else ours[key]
        if code != 0:
            problems.append(f"{inv.where}: {shlex.join(key)} --help exited {code}: {text[-500:]}")
            continue
        for flag in inv.flags:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"{inv.where}: {flag} is not an option of {shlex.join(key)}")
    assert not problems, "\n".join(problems)
    assert all(GATE_MODULE in entry for entry in unchecked), f"flags not checked: {unchecked}"
    if unchecked:
        pytest.skip(f"{GATE_MODULE} is not in the tree yet, so its flags were not checked: {unchecked}")


# ---- the entry scripts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCRIPTS.iterdir()), ids=lambda p: p.name)
def test_scripts_parse(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if first == "#!/usr/bin/env bash":
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    else:
        assert first == "#!/usr/bin/env python3"
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_hospital_entry_passes_the_node_config_keys_the_client_reads() -> None:
    text = (SCRIPTS / "fedmammo-hospital").read_text(encoding="utf-8")
    for key in (MANIFEST_KEY, SITE_NAME_KEY, CACHE_DIR_KEY, LEDGER_KEY):
        assert f'{key}=\\"' in text, f"node config key {key!r}"
    for key in (MAX_EPSILON_KEY, MAX_DELTA_KEY, MIN_NOISE_KEY):
        assert f":{key} " in text or f":{key};" in text, f"node config key {key!r}"
    assert f" {ACCOUNTANT_KEY}=" in text


FAKE_SUPERNODE = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_DIR/supernode.args"
echo $$ > "$FAKE_DIR/supernode.pid"
[[ -n ${FAKE_SUPERNODE_EXIT:-} ]] && { sleep 0.3; exit "$FAKE_SUPERNODE_EXIT"; }
exec sleep 30
"""
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_DIR/gate.args"
echo $$ > "$FAKE_DIR/gate.pid"
[[ -n ${FAKE_GATE_EXIT:-} ]] && { sleep 0.3; exit "$FAKE_GATE_EXIT"; }
exec sleep 30
"""


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture
def hospital(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The hospital entry script's environment, with stand-ins for flower-supernode and python (the gate); whatever
    a test leaves running is killed with its process group."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name, body in (("flower-supernode", FAKE_SUPERNODE), ("python", FAKE_PYTHON)):
        (fake / name).write_text(body, encoding="utf-8")
        (fake / name).chmod(0o755)
    files = {name: tmp_path / name for name in ("ca.crt", "hospital-a", "policy.toml", "manifest.csv")}
    for path in files.values():
        path.write_text("x", encoding="utf-8")
    (tmp_path / "state").mkdir()
    yield {
        **os.environ,
        "PATH": os.pathsep.join((str(fake), os.environ.get("PATH", ""))),
        "FAKE_DIR": str(fake),
        "FEDMAMMO_SUPERLINK": "superlink:8000",
        "FEDMAMMO_SITE_NAME": "hospital-a",
        "FEDMAMMO_NODE_KEY": str(files["hospital-a"]),
        "FEDMAMMO_CA_CERT": str(files["ca.crt"]),
        "FEDMAMMO_POLICY": str(files["policy.toml"]),
        "FEDMAMMO_MANIFEST": str(files["manifest.csv"]),
        "FEDMAMMO_STATE_DIR": str(tmp_path / "state"),
        "FEDMAMMO_MAX_EPSILON": "10",
        "FEDMAMMO_MIN_NOISE_MULTIPLIER": "0.8",
    }
    while STARTED:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(STARTED.pop().pid, signal.SIGKILL)


def _start_hospital(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [str(SCRIPTS / "fedmammo-hospital")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    STARTED.append(process)
    return process


def _recorded(env: dict[str, str], what: str) -> tuple[list[str], int]:
    fake = Path(env["FAKE_DIR"])
    deadline = time.monotonic() + 10
    while not (fake / f"{what}.pid").is_file() or not (fake / f"{what}.pid").read_text().strip():
        assert time.monotonic() < deadline, f"{what} was not started"
        time.sleep(0.05)
    return (fake / f"{what}.args").read_text().splitlines(), int((fake / f"{what}.pid").read_text())


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_hospital_runs_the_supernode_in_process_isolation_beside_the_gate(hospital: dict[str, str]) -> None:
    process = _start_hospital({**hospital, "FAKE_GATE_EXIT": "3"})
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 3, output
    assert "the policy gate exited with status 3; stopping the SuperNode" in output
    supernode, supernode_pid = _recorded(hospital, "supernode")
    gate, _ = _recorded(hospital, "gate")
    assert _gone(supernode_pid), "the SuperNode must be stopped when the gate exits"
    options = dict(zip(supernode[::2], supernode[1::2], strict=False))
    state = hospital["FEDMAMMO_STATE_DIR"]
    assert options == {
        "--superlink": "superlink:8000",
        "--root-certificates": hospital["FEDMAMMO_CA_CERT"],
        "--auth-supernode-private-key": hospital["FEDMAMMO_NODE_KEY"],
        "--node-config": f'{MANIFEST_KEY}="{hospital["FEDMAMMO_MANIFEST"]}" {SITE_NAME_KEY}="hospital-a" '
        f'{CACHE_DIR_KEY}="{state}/cache" {LEDGER_KEY}="{state}/privacy_ledger.json" '
        f"{MAX_EPSILON_KEY}=10 {MIN_NOISE_KEY}=0.8",
        "--isolation": "process",
        "--host": "127.0.0.1",
        "--port": "9094",
        "--max-retries": "10",
    }
    assert gate == ["-m", GATE_MODULE, "--policy", hospital["FEDMAMMO_POLICY"], "--runtime-api-address",
                    "127.0.0.1:9094", "--insecure"]  # fmt: skip


def test_hospital_stops_the_gate_when_the_supernode_exits(hospital: dict[str, str]) -> None:
    process = _start_hospital({**hospital, "FAKE_SUPERNODE_EXIT": "5"})
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 5, output
    assert "the SuperNode exited with status 5; stopping the policy gate" in output
    assert _gone(_recorded(hospital, "gate")[1])


def test_hospital_stops_both_on_sigterm(hospital: dict[str, str]) -> None:
    process = _start_hospital(hospital)
    _, supernode = _recorded(hospital, "supernode")
    _, gate = _recorded(hospital, "gate")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert _gone(supernode) and _gone(gate)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"FEDMAMMO_SUPERLINK": ""}, "set FEDMAMMO_SUPERLINK"),
        ({"FEDMAMMO_SITE_NAME": "a b"}, "FEDMAMMO_SITE_NAME"),
        ({"FEDMAMMO_MAX_EPSILON": "1; rm"}, "is not a number"),
        ({"FEDMAMMO_POLICY": "/nonexistent/policy.toml"}, "/nonexistent/policy.toml is missing"),
    ],
)
def test_hospital_refuses_a_bad_setting_before_starting_anything(
    hospital: dict[str, str], setting: dict[str, str], message: str
) -> None:
    process = _start_hospital({**hospital, **setting})
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 2 and message in output, output
    assert not (Path(hospital["FAKE_DIR"]) / "supernode.args").exists()


def test_demo_setup_writes_what_the_services_mount(tmp_path: Path) -> None:
    """The `pki` service's script for real (one hospital): the layout the compose subpaths name, idempotently."""
    out, app = tmp_path / "config", tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())  # a bundle of one file: fast
    command = [str(SCRIPTS / "demo-setup"), str(out), "superlink", "hospital-a"]
    env = {**ENV, "FEDMAMMO_APP_DIR": str(app)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HELP_TIMEOUT_S, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    layout = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert set(layout) == {
        "ca/ca.crt", "ca/ca.key",
        "coordinator/ca.crt", "coordinator/server.pem", "coordinator/server.key",
        "operator/ca.crt", "operator/hospital-a.pub",
        "hospital-a/ca.crt", "hospital-a/hospital-a", "hospital-a/hospital-a.pub", "hospital-a/policy.toml",
    }  # fmt: skip
    assert layout["ca/ca.key"] == layout["coordinator/server.key"] == layout["hospital-a/hospital-a"] == 0o600
    policy = tomllib.loads((out / "hospital-a" / "policy.toml").read_text(encoding="utf-8"))
    from deploy.app_hash import app_hash

    assert policy["approved-app-hashes"] == [app_hash(app)]
    assert policy["audit-log"].startswith(f"{STATE_DIR}/")
    key = (out / "hospital-a" / "hospital-a").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HELP_TIMEOUT_S, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "hospital-a" / "hospital-a").read_bytes() == key, "a second run must keep the keys"
