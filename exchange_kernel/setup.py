"""`exchange-kernel setup`: prepare a Temporal namespace for the kernel, idempotently.

1. connect (envconfig profile / TEMPORAL_* variables, overridden by --address / --namespace);
2. check that the namespace exists (DescribeNamespace): creating namespaces is an operator's
   decision (retention, replication), so setup says how instead of doing it;
3. list the namespace's search attributes and register the missing ones of
   `devserver.SEARCH_ATTRIBUTES` through the operator service; an attribute that exists with
   another type is a conflict, reported, never changed.

Running it again changes nothing and reports every attribute as already present. On Temporal
Cloud the operator API may not be open to the credentials in use (PermissionDenied): the error
then gives the `tcld` command that adds the attributes (or use the Cloud UI).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.connection import TemporalUnreachable, connect
from exchange_kernel.devserver import SEARCH_ATTRIBUTES


class SetupError(RuntimeError):
    """Setup cannot go on: the message says why and what to run instead."""


class NamespaceMissing(SetupError):
    """The namespace does not exist (yet): `--wait` keeps retrying this one."""


class Outcome(StrEnum):
    REGISTERED = "registered"
    PRESENT = "already present"
    CONFLICT = "type conflict"


@dataclass(frozen=True)
class AttributeResult:
    name: str
    wanted: str
    outcome: Outcome
    found: str | None = None  # the type it already has (conflicts)


@dataclass
class SetupReport:
    target: str
    namespace: str
    attributes: list[AttributeResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.outcome is not Outcome.CONFLICT for a in self.attributes)

    def of(self, outcome: Outcome) -> list[str]:
        return [a.name for a in self.attributes if a.outcome is outcome]

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "namespace": self.namespace,
            "ok": self.ok,
            "attributes": [
                {"name": a.name, "type": a.wanted, "outcome": a.outcome.value, "found": a.found}
                for a in self.attributes
            ],
        }


def type_name(value: int) -> str:
    """`INDEXED_VALUE_TYPE_KEYWORD_LIST` -> `KeywordList`, as tcld and the CLI spell types."""
    try:
        raw = IndexedValueType.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return f"unknown({value})"
    words = raw.removeprefix("INDEXED_VALUE_TYPE_").split("_")
    return "".join(word.capitalize() for word in words)


def tcld_command(namespace: str, attributes: Mapping[str, int]) -> str:
    flags = " ".join(f'--sa "{name}={type_name(t)}"' for name, t in attributes.items())
    return f"tcld namespace search-attributes add --namespace {namespace} {flags}"


def create_namespace_hint(namespace: str, target: str) -> str:
    return (
        f"Create it with `temporal operator namespace create --namespace {namespace} "
        f"--address {target} --retention 30d` (self-hosted), or in the Temporal Cloud UI / "
        f"with `tcld namespace create` (Cloud), then run setup again."
    )


def _is_config_error(exc: BaseException) -> bool:
    # temporalio.envconfig raises the bridge's ConfigError (a RuntimeError) for an unknown
    # profile or an unreadable temporal.toml.
    return type(exc).__name__ == "ConfigError"


async def open_client(
    address: str | None, namespace: str | None, profile: str | None
) -> tuple[Client, str]:
    """A client like every other command's, and the address it reached."""
    try:
        client = await connect(address, namespace, profile=profile)
    except ValueError as exc:
        raise TemporalUnreachable(
            f"invalid Temporal server address {address!r} ({exc}): expected host:port"
        ) from None
    except RuntimeError as exc:
        if _is_config_error(exc):
            raise SetupError(f"Temporal client configuration (envconfig): {exc}") from None
        raise
    return client, client.service_client.config.target_host


async def describe_namespace(client: Client, target: str) -> None:
    namespace = client.namespace
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceMissing(
                f"namespace {namespace!r} does not exist on {target}. "
                + create_namespace_hint(namespace, target)
            ) from None
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
            raise SetupError(
                f"not allowed to describe namespace {namespace!r} on {target} ({exc.message}): "
                "check the API key / client certificate of the envconfig profile in use"
            ) from None
        raise


def _operator_refused(exc: RPCError) -> bool:
    return exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED)


def _cloud_message(namespace: str, action: str, exc: RPCError, missing: Mapping[str, int]) -> str:
    return (
        f"the server refused to {action} search attributes of namespace {namespace!r} "
        f"({exc.status.name}: {exc.message}). On Temporal Cloud the operator API is not open "
        "to namespace credentials: add them in the Cloud UI (Namespaces -> "
        f"{namespace} -> Custom Search Attributes) or with\n  {tcld_command(namespace, missing)}"
        "\nthen run setup again to check."
    )


async def list_attributes(client: Client) -> tuple[dict[str, int], set[str]]:
    """(custom attribute name -> type, system attribute names) of the client's namespace."""
    try:
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError as exc:
        if _operator_refused(exc):
            wanted = {name: int(t) for name, t in SEARCH_ATTRIBUTES.items()}
            raise SetupError(_cloud_message(client.namespace, "list", exc, wanted)) from None
        raise
    return dict(response.custom_attributes), set(response.system_attributes)


def classify(
    wanted: Mapping[str, SearchAttributeIndexedValueType],
    custom: Mapping[str, int],
    system: set[str],
) -> tuple[list[AttributeResult], dict[str, int]]:
    """(results for the attributes that exist, the missing ones to add)."""
    results: list[AttributeResult] = []
    missing: dict[str, int] = {}
    for name, value_type in wanted.items():
        want = int(value_type)
        if name in system:
            results.append(
                AttributeResult(name, type_name(want), Outcome.CONFLICT, "a system attribute")
            )
        elif name not in custom:
            missing[name] = want
        elif custom[name] == want:
            results.append(AttributeResult(name, type_name(want), Outcome.PRESENT))
        else:
            results.append(
                AttributeResult(name, type_name(want), Outcome.CONFLICT, type_name(custom[name]))
            )
    return results, missing


async def register_search_attributes(
    client: Client,
    wanted: Mapping[str, SearchAttributeIndexedValueType] = SEARCH_ATTRIBUTES,
    *,
    settle_timeout: float = 15.0,
) -> list[AttributeResult]:
    """Register the missing attributes of `wanted`; report every one. Idempotent."""
    custom, system = await list_attributes(client)
    results, missing = classify(wanted, custom, system)
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if _operator_refused(exc):
                raise SetupError(_cloud_message(client.namespace, "add", exc, missing)) from None
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise
            # Someone registered some of them at the same time: the listing below tells.
        # Visibility stores may take a moment to list what was added: wait for it.
        deadline = time.monotonic() + settle_timeout
        while True:
            custom, system = await list_attributes(client)
            if all(name in custom for name in missing) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        for name, want in missing.items():
            if name not in custom:
                raise SetupError(
                    f"search attribute {name} was added but is not listed after "
                    f"{settle_timeout:.0f}s; run setup again to check"
                )
            if custom[name] == want:
                results.append(AttributeResult(name, type_name(want), Outcome.REGISTERED))
            else:
                results.append(
                    AttributeResult(
                        name, type_name(want), Outcome.CONFLICT, type_name(custom[name])
                    )
                )
    order = list(wanted)
    return sorted(results, key=lambda result: order.index(result.name))


async def run_setup(
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    *,
    wait: float = 0.0,
    wanted: Mapping[str, SearchAttributeIndexedValueType] = SEARCH_ATTRIBUTES,
) -> SetupReport:
    """Connect, check the namespace, register the search attributes; see the module doc.

    `wait` > 0 retries an unreachable server or a missing namespace for that many seconds
    (a compose stack whose server and namespace are still coming up).
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            client, target = await open_client(address, namespace, profile)
            await describe_namespace(client, target)
            break
        except (TemporalUnreachable, NamespaceMissing):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    report = SetupReport(target=target, namespace=client.namespace)
    report.attributes = await register_search_attributes(client, wanted)
    return report
