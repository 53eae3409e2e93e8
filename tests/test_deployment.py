"""Deployment: docker-compose.yml and the Dockerfile checked statically (no Docker engine runs in
CI), and `exchange-kernel setup` against a real dev server that has none of our search
attributes registered.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from exchange_kernel.accounts import load_accounts
from exchange_kernel.cli import app
from exchange_kernel.devserver import SEARCH_ATTRIBUTES, DevServer, free_port
from exchange_kernel.setup import (
    Outcome,
    SetupError,
    classify,
    register_search_attributes,
    tcld_command,
)
from tests import yaml_subset

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
runner = CliRunner()


# --- the compose file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml_subset.load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment: use the mapping form"
    return {str(k): str(v) for k, v in env.items()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for mapping in service.get("ports") or []:
        assert isinstance(mapping, str), f"quote port mappings: {mapping!r}"
        ports.add(int(mapping.rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts (`./host:/container[:ro]`)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        host, container, *_ = str(volume).split(":")
        if host.startswith(("./", "../", "/")):
            mounts[container] = (ROOT / host).resolve()
    return mounts


def _click_command(*path: str) -> Any:
    """The (typer-vendored) click command object of `exchange-kernel <path...>`."""
    command: Any = typer.main.get_command(app)
    for name in path:
        assert hasattr(command, "commands"), f"{name}: not a command group"
        sub = command.commands.get(name)
        assert sub is not None, f"exchange-kernel has no command {' '.join(path)}"
        command = sub
    return command


def check_cli_invocation(argv: list[str]) -> None:
    """`argv` (after `exchange-kernel`) names a real command and only options it has."""
    words = [a for a in argv if not a.startswith("-")]
    path = []
    group: Any = typer.main.get_command(app)
    for word in words:
        if word in getattr(group, "commands", {}):
            path.append(word)
            group = group.commands[word]
        else:
            break
    assert path, f"{argv}: no exchange-kernel command in it"
    command = _click_command(*path)
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    for flag in flags:
        assert flag in known, f"`exchange-kernel {' '.join(path)}` has no option {flag}"
        assert flag in result.output, f"{flag} missing from `{' '.join(path)} --help`"
    # Every option that takes a value got one (the word after it is not another flag).
    for index, arg in enumerate(argv):
        if arg.startswith("--") and "=" not in arg:
            param = next(p for p in command.params if arg in p.opts)
            if not getattr(param, "is_flag", False):
                assert index + 1 < len(argv) and not argv[index + 1].startswith("--"), arg


def test_compose_file_parses_like_pyyaml_would() -> None:
    """Cross-check of the subset parser against PyYAML, where some Python has it."""
    text = COMPOSE_FILE.read_text()
    mine = yaml_subset.load(text)
    try:
        import yaml  # type: ignore[import-untyped]

        theirs = yaml.safe_load(text)
    except ImportError:
        system = shutil.which("python3", path="/usr/bin")
        probe = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"
        if system is None:
            pytest.skip("no PyYAML anywhere to cross-check with (the other tests still parse)")
        done = subprocess.run([system, "-c", probe], input=text, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip("no PyYAML anywhere to cross-check with (the other tests still parse)")
        theirs = json.loads(done.stdout)
    assert json.loads(json.dumps(mine)) == theirs


def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-namespace",
        "temporal-ui",
        "setup",
        "worker",
        "paper",
    }
    assert expected <= set(services)
    assert services["postgresql"]["image"].startswith("postgres:")
    assert services["temporal"]["image"].startswith(
        ("temporalio/server:", "temporalio/auto-setup:")
    )
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    version = PYPROJECT["project"]["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        tag = _image_tag(image)
        assert tag and tag != "latest" and "$" not in tag, f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image}: pin a version, not a moving name"
        if "build" in service:
            assert image == f"exchange-kernel:{version}", f"{name}: tag the build with {version}"


def test_every_referenced_file_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            context = ROOT / str(service["build"])
            assert (context / "Dockerfile").is_file(), f"{name}: no Dockerfile in {context}"
        mounts = _mounts(service)
        for host in mounts.values():
            assert host.exists(), f"{name}: mounts {host}, which does not exist"
        # Scripts the command runs from a mounted directory exist on the host side.
        words = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        for word in words:
            for container, host in mounts.items():
                if isinstance(word, str) and word.startswith(container + "/"):
                    target = host / word[len(container) + 1 :]
                    assert target.is_file(), f"{name}: runs {word}, but {target} is missing"


def test_depends_on_names_services(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            # A profile service is not always there: nothing may depend on it unconditionally.
            assert not services[dependency].get("profiles"), f"{name} needs {dependency}"


def test_the_temporal_address_everywhere_is_the_temporal_service(
    services: dict[str, dict[str, Any]],
) -> None:
    temporal = services["temporal"]
    (frontend,) = _container_ports(temporal)
    assert str(frontend) in temporal["healthcheck"]["test"]
    for name in ("setup", "worker", "temporal-ui", "temporal-namespace"):
        address = _env(services[name]).get("TEMPORAL_ADDRESS")
        assert address == f"temporal:{frontend}", f"{name}: TEMPORAL_ADDRESS={address}"
    namespace = _env(services["temporal-namespace"])["NAMESPACE"]
    for name in ("setup", "worker"):
        assert _env(services[name])["TEMPORAL_NAMESPACE"] == namespace


def test_temporal_and_its_schema_job_use_the_postgres_service(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = _env(services["postgresql"])
    for name in ("temporal", "temporal-schema"):
        env = _env(services[name])
        assert env["POSTGRES_SEEDS"] == "postgresql"
        assert env["DB_PORT"] == "5432"
        assert env["POSTGRES_USER"] == postgres["POSTGRES_USER"]
    assert _env(services["temporal"])["POSTGRES_PWD"] == postgres["POSTGRES_PASSWORD"]
    assert _env(services["temporal-schema"])["SQL_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    # The dynamic config file the server is told to read is the one mounted.
    temporal = services["temporal"]
    config = _env(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    mounts = _mounts(temporal)
    host = mounts["/etc/temporal/config/dynamicconfig"]
    assert (host / Path(config).name).is_file()


def test_setup_runs_once_after_temporal_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    setup = services["setup"]
    assert setup["command"][0] == "setup"
    check_cli_invocation(setup["command"])
    assert setup["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert setup.get("restart") == "no"
    assert services["worker"]["depends_on"]["setup"]["condition"] == (
        "service_completed_successfully"
    )


def test_worker_command_matches_the_cli_and_its_accounts_are_mounted(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    command = worker["command"]
    assert command[:3] == ["worker", "--accounts", "/config/accounts.toml"]
    check_cli_invocation(command)
    host_file = _mounts(worker)["/config/accounts.toml"]
    accounts = load_accounts(host_file)
    env = _env(worker)
    for config in accounts.values():
        assert config.api_key_env in env and config.secret_env in env, config.name


def test_paper_exchange_is_an_optional_profile_the_accounts_file_points_at(
    services: dict[str, dict[str, Any]],
) -> None:
    paper = services["paper"]
    assert paper["profiles"] == ["paper"]
    command = paper["command"]
    assert command == ["sim", "--host", "0.0.0.0", "--port", "8900"]
    check_cli_invocation(command)
    assert _container_ports(paper) == {8900}
    accounts = load_accounts(_mounts(services["worker"])["/config/accounts.toml"])
    assert accounts["paper"].base_url == "http://paper:8900"


def test_ui_reaches_temporal_and_is_published(services: dict[str, dict[str, Any]]) -> None:
    ui = services["temporal-ui"]
    assert _container_ports(ui) == {8080}
    assert ui["depends_on"]["temporal"]["condition"] == "service_healthy"


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_base_image_is_pinned() -> None:
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert froms
    for image in froms:
        image = image.split()[0]
        tag = _image_tag(image)
        assert tag and tag != "latest", f"FROM {image} is not pinned"
        assert re.match(r"3\.11\.\d+-slim-bookworm$", tag) or "@sha256:" in image, image


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_the_worker() -> None:
    instructions = dict(dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])  # exec form: signals reach the worker
    assert entrypoint == ["exchange-kernel"]
    assert PYPROJECT["project"]["scripts"]["exchange-kernel"] == "exchange_kernel.cli:app"
    command = json.loads(instructions["CMD"])
    assert command == ["worker", "--accounts", "/config/accounts.toml"]
    check_cli_invocation(command)


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [shlex.split(rest) for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert copies
    for *sources, _destination in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source not in ignored, f"{source} is copied but .dockerignore drops it"
    assert any("pip install ." in rest for keyword, rest in dockerfile_instructions())


# --- the subset parser itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2]\n",
        "a: {b: 1}\n",
        "a: &x 1\n",
        "a: no\n",
        "a: 0755\n",
        "a: 1.5\n",
        "a: 22:22\n",
        "a:\n  - b: 1\n",
        "a: 1\na: 2\n",
        "a: |\n  text\n",
        "a:\n\tb: 1\n",
        "a: 1\n  b: 2\n",
    ],
)
def test_the_subset_parser_refuses_what_it_does_not_know(text: str) -> None:
    with pytest.raises(yaml_subset.YamlSubsetError):
        yaml_subset.load(text)


def test_the_subset_parser_reads_blocks_scalars_and_comments() -> None:
    text = (
        "# head\n"
        "a:\n"
        "  b: 'it''s' # c\n"
        '  c: "x#y"\n'
        "  d:\n"
        "    - 1\n"
        "    - ${X:-y}\n"
        "    - '0.0.0.0'\n"
        "  e:\n"
        "f: true\n"
    )
    assert yaml_subset.load(text) == {
        "a": {"b": "it's", "c": "x#y", "d": [1, "${X:-y}", "0.0.0.0"], "e": None},
        "f": True,
    }


# --- exchange-kernel setup against a dev server with nothing registered ----------------------

CONFLICT_NAMESPACE = "ek-conflict"


@pytest.fixture(scope="module")
def bare_server() -> Iterator[DevServer]:
    """A dev server with none of our search attributes (and a second namespace)."""
    server = DevServer(
        port=free_port(),
        headless=True,
        search_attributes={},
        extra_args=["--namespace", CONFLICT_NAMESPACE],
    )
    server.start_process()
    try:
        server.wait_ready_sync()
        yield server
    finally:
        server.terminate()


async def _custom_attributes(server: DevServer, namespace: str) -> dict[str, int]:
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    client = await server.connect(namespace=namespace)
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(response.custom_attributes)


def test_setup_registers_the_missing_attributes_then_finds_them_present(
    bare_server: DevServer,
) -> None:
    before = asyncio.run(_custom_attributes(bare_server, "default"))
    assert not set(SEARCH_ATTRIBUTES) & set(before)

    first = runner.invoke(app, ["setup", "--address", bare_server.target, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["ok"] and report["namespace"] == "default"
    assert [a["name"] for a in report["attributes"]] == list(SEARCH_ATTRIBUTES)
    assert {a["outcome"] for a in report["attributes"]} == {"registered"}

    after = asyncio.run(_custom_attributes(bare_server, "default"))
    for name, value_type in SEARCH_ATTRIBUTES.items():
        assert after[name] == int(value_type), name

    second = runner.invoke(app, ["setup", "--address", bare_server.target])
    assert second.exit_code == 0, second.output
    for name in SEARCH_ATTRIBUTES:
        line = next(line for line in second.output.splitlines() if name in line)
        assert "already present" in line, line
    assert "registered" not in second.output


def test_setup_reports_a_type_conflict_and_registers_the_rest(bare_server: DevServer) -> None:
    async def pre_register() -> None:
        client = await bare_server.connect(namespace=CONFLICT_NAMESPACE)
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=CONFLICT_NAMESPACE,
                search_attributes={"IntentStatus": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
            )
        )

    asyncio.run(pre_register())
    result = runner.invoke(
        app, ["setup", "--address", bare_server.target, "--namespace", CONFLICT_NAMESPACE]
    )
    assert result.exit_code == 1, result.output
    conflict = next(line for line in result.output.splitlines() if "IntentStatus" in line)
    assert "type conflict" in conflict and "Text" in conflict
    assert "search attribute type conflict: IntentStatus" in result.output
    after = asyncio.run(_custom_attributes(bare_server, CONFLICT_NAMESPACE))
    assert after["IntentStatus"] == IndexedValueType.INDEXED_VALUE_TYPE_TEXT  # untouched
    assert after["IntentSymbol"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


def test_setup_on_a_missing_namespace_says_how_to_create_it(bare_server: DevServer) -> None:
    result = runner.invoke(
        app, ["setup", "--address", bare_server.target, "--namespace", "no-such-namespace"]
    )
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "namespace 'no-such-namespace' does not exist" in output
    assert "temporal operator namespace create --namespace no-such-namespace" in output


def test_setup_waits_for_a_namespace_that_is_being_created(bare_server: DevServer) -> None:
    from datetime import timedelta

    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

    from exchange_kernel.setup import run_setup

    async def scenario() -> Any:
        setup = asyncio.create_task(
            run_setup(bare_server.target, "ek-late", wait=30, wanted={"IntentAccount": 2})
        )
        await asyncio.sleep(1.5)
        assert not setup.done()  # still waiting for the namespace
        client = await bare_server.connect()
        retention = Duration()
        retention.FromTimedelta(timedelta(days=1))
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace="ek-late", workflow_execution_retention_period=retention
            )
        )
        return await asyncio.wait_for(setup, 30)

    report = asyncio.run(scenario())
    assert report.namespace == "ek-late"
    assert [(a.name, a.outcome) for a in report.attributes] == [
        ("IntentAccount", Outcome.REGISTERED)
    ]


def test_setup_with_an_unknown_profile_names_it(tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.default]\naddress = "127.0.0.1:1"\n')
    result = runner.invoke(
        app, ["setup", "--profile", "nope"], env={"TEMPORAL_CONFIG_FILE": str(config)}
    )
    assert result.exit_code == 1
    assert "Profile 'nope' not found" in result.output


def test_setup_against_a_stopped_server_fails_fast() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["setup", "--address", address])
    assert result.exit_code == 1
    assert "cannot reach the Temporal server" in result.output


def test_setup_uses_the_profile_of_temporal_toml(bare_server: DevServer, tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.cluster]\naddress = "{bare_server.target}"\nnamespace = "default"\n'
    )
    result = runner.invoke(
        app,
        ["setup", "--profile", "cluster", "--json"],
        env={"TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_ADDRESS": None},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["target"] == bare_server.target


# --- Temporal Cloud: the operator API refused -----------------------------------------------


class _RefusingOperator:
    def __init__(self, refuse_list: bool) -> None:
        self.refuse_list = refuse_list

    async def list_search_attributes(self, request: Any) -> Any:
        if self.refuse_list:
            raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")
        from temporalio.api.operatorservice.v1 import ListSearchAttributesResponse

        return ListSearchAttributesResponse(custom_attributes={"IntentAccount": 2})

    async def add_search_attributes(self, request: Any) -> Any:
        raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")


class _CloudClient:
    namespace = "trading.a1b2c"

    def __init__(self, refuse_list: bool) -> None:
        self.operator_service = _RefusingOperator(refuse_list)


@pytest.mark.parametrize("refuse_list", [False, True])
async def test_permission_denied_points_at_tcld_and_the_cloud_ui(refuse_list: bool) -> None:
    client: Client = _CloudClient(refuse_list)  # type: ignore[assignment]
    with pytest.raises(SetupError) as raised:
        await register_search_attributes(client)
    message = str(raised.value)
    assert "PERMISSION_DENIED" in message
    assert "Cloud UI" in message
    assert "tcld namespace search-attributes add --namespace trading.a1b2c" in message
    assert '--sa "ExchangeOrderIds=KeywordList"' in message
    # Only what is missing is asked for, when the listing worked.
    assert ("IntentAccount=Keyword" in message) is refuse_list


def test_classify_sorts_present_conflicting_and_missing() -> None:
    custom = {"IntentAccount": 2, "IntentSymbol": 1}
    results, missing = classify(SEARCH_ATTRIBUTES, custom, {"WorkflowType"})
    by_name = {r.name: r for r in results}
    assert by_name["IntentAccount"].outcome is Outcome.PRESENT
    assert by_name["IntentSymbol"].outcome is Outcome.CONFLICT
    assert by_name["IntentSymbol"].found == "Text"
    assert set(missing) == set(SEARCH_ATTRIBUTES) - {"IntentAccount", "IntentSymbol"}
    assert "tcld" in tcld_command("ns", missing)


def test_setup_help_lists_its_options() -> None:
    result = runner.invoke(app, ["setup", "--help"])
    assert result.exit_code == 0
    for flag in ("--address", "--namespace", "--profile", "--wait", "--json"):
        assert flag in result.output


def test_module_runs_as_a_script() -> None:
    """`python -m exchange_kernel.cli` is how the scale-out test starts workers."""
    done = subprocess.run(
        [sys.executable, "-m", "exchange_kernel.cli", "setup", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
