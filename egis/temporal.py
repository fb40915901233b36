"""Connecting to Temporal: always with the pydantic data converter (Decimals, enums and models
round-trip exactly), and with SDK metrics when the caller asks for them."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

_runtimes: dict[str, Runtime] = {}


def metrics_runtime(bind_address: str) -> Runtime:
    """A Runtime exporting the SDK's own metrics (temporal_*) on `bind_address` (one per address)."""
    if bind_address not in _runtimes:
        _runtimes[bind_address] = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address))
        )
    return _runtimes[bind_address]


async def connect(address: str, namespace: str = "default", *, runtime: Runtime | None = None) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter, runtime=runtime)


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register the project's search attributes on the namespace if missing; returns those added.

    Idempotent, so every worker replica can call it at start on any deployment.
    """
    from egis.models import ALL_SEARCH_ATTRIBUTES

    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = [k.name for k in ALL_SEARCH_ATTRIBUTES if k.name not in known]
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing},
            )
        )
    return missing
