"""Connecting to Temporal, the way every Temporal tool does, in one place.

Where the connection settings come from, later ones winning:

1. the client profile of `temporalio.envconfig`: the TOML file (`TEMPORAL_CONFIG_FILE`, else the
   file `temporal config set` writes, ~/.config/temporalio/temporal.toml), profile
   `TEMPORAL_PROFILE` (default `default`), then the standard variables over it:
   `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS`,
   `TEMPORAL_TLS_CLIENT_CERT_PATH|_DATA`, `TEMPORAL_TLS_CLIENT_KEY_PATH|_DATA`,
   `TEMPORAL_TLS_SERVER_CA_CERT_PATH|_DATA`, `TEMPORAL_TLS_SERVER_NAME`, `TEMPORAL_GRPC_META_*`.
   envconfig reads the process environment only; here those names also work from `.env`
   (the process environment wins, as for every other setting);
2. Egis's own settings (`egis.config.Settings`, environment or `.env`): `TEMPORAL_ADDRESS` /
   `EGIS_TEMPORAL_ADDRESS` and `TEMPORAL_NAMESPACE` / `EGIS_TEMPORAL_NAMESPACE` (when set).

The address: Egis's setting; else a profile's address when the profile was chosen for this
process (`TEMPORAL_CONFIG_FILE` or `TEMPORAL_PROFILE` set); else the running embedded stack of
the data dir (`egis dev up`, found through `<data dir>/stack.json`), so the CLI talks to the
server whose worker `egis dev up` runs; else the address in the user-wide default file; else an
error. With no configuration at all, the embedded stack is used.

The embedded stack is a plain-text local dev server: an address that is the running embedded
stack's is always dialled without TLS, API key or gRPC metadata, whatever a profile says (a
profile for Temporal Cloud in ~/.config must not break `egis dev up`).

Every client gets the pydantic data converter (Decimals, enums and models round-trip exactly),
SDK metrics when the caller asks for them, and OpenTelemetry tracing when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `otel` extra is installed.

Secrets (API key, client key, gRPC metadata values) are never logged: `ConnectOptions` keeps
them out of its repr, `describe()` names only what kind of credentials are used, and they are
registered with `egis.redact` as they are loaded.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from egis import redact
from egis.errors import StackError

if TYPE_CHECKING:
    from egis.config import Settings

log = logging.getLogger("egis.temporal")

_runtimes: dict[str, Runtime] = {}


def metrics_runtime(bind_address: str) -> Runtime:
    """A Runtime exporting the SDK's own metrics (temporal_*) on `bind_address` (one per address)."""
    if bind_address not in _runtimes:
        _runtimes[bind_address] = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address))
        )
    return _runtimes[bind_address]


# ---------------------------------------------------------------- connection settings
@dataclass(frozen=True)
class ConnectOptions:
    """What `Client.connect` is called with (besides the data converter, runtime, interceptors).

    The repr leaves out every credential; log `describe()`.
    """

    target_host: str
    namespace: str = "default"
    api_key: str | None = field(default=None, repr=False)
    tls: bool | TLSConfig = field(default=False, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)
    embedded: bool = False  # the running embedded stack (`egis dev up`): a plain local dev server
    source: str = ""  # where the address came from, for messages

    def describe(self) -> str:
        """`host:port namespace ns (TLS, API key)`: what is used, never a secret."""
        how = []
        if isinstance(self.tls, TLSConfig):
            how.append("mTLS" if self.tls.client_cert else "TLS")
            if self.tls.server_root_ca_cert:
                how.append("own CA")
            if self.tls.domain:
                how.append(f"server name {self.tls.domain}")
        elif self.tls:
            how.append("TLS")
        if self.api_key:
            how.append("API key")
        if self.rpc_metadata:
            how.append("gRPC metadata " + ", ".join(sorted(self.rpc_metadata)))
        text = f"{self.target_host} namespace {self.namespace}"
        if self.embedded:
            text += " (embedded stack)"
        elif how:
            text += " (" + ", ".join(how) + ")"
        return text

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"namespace": self.namespace, "tls": self.tls}
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if self.rpc_metadata:
            kwargs["rpc_metadata"] = dict(self.rpc_metadata)
        return kwargs


def temporal_environ(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment envconfig should read: the process's, plus the standard `TEMPORAL_*`
    names from the settings' `.env` file where the process environment lacks them."""
    from dotenv import dotenv_values

    env = dict(os.environ if environ is None else environ)
    env_files = settings.model_config.get("env_file")
    if env_files is None:
        return env
    if isinstance(env_files, str | Path):
        env_files = [env_files]
    from_files: dict[str, str] = {}
    for env_file in env_files:
        path = Path(env_file).expanduser()
        if path.is_file():
            values = dotenv_values(path, encoding=settings.model_config.get("env_file_encoding"))
            from_files.update({k: v for k, v in values.items() if k.startswith("TEMPORAL_") and v is not None})
    return {**from_files, **env}


def _load_profile(env: Mapping[str, str]) -> dict[str, Any]:
    config_file = env.get("TEMPORAL_CONFIG_FILE")
    if config_file and not Path(config_file).expanduser().is_file():
        # envconfig would silently fall back to no file at all
        raise StackError(f"TEMPORAL_CONFIG_FILE names {config_file}, which is not a readable file")
    where = f"{config_file or 'the default temporal.toml'}, profile {env.get('TEMPORAL_PROFILE') or 'default'}"
    try:
        loaded = ClientConfig.load_client_connect_config(override_env_vars=dict(env))
    except FileNotFoundError as exc:  # a TLS file named by the profile or TEMPORAL_TLS_*_PATH
        raise StackError(f"Temporal client configuration ({where}): file not found: {exc.filename}") from None
    except Exception as exc:
        # first line only: a TOML parse error quotes the offending line, which may hold a secret
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StackError(f"Temporal client configuration ({where}): {first}") from None
    return dict(loaded)


def resolve_connect_options(settings: Settings, environ: Mapping[str, str] | None = None) -> ConnectOptions:
    """The connection Egis uses for `settings`: see the module docstring for the order."""
    env = temporal_environ(settings, environ)
    explicit_namespace = "temporal_namespace" in settings.model_fields_set
    running = settings.running_stack() or {}
    embedded_address = running.get("temporal_address") or ""
    # a profile chosen for this process beats the running embedded stack; the user-wide default
    # file (written for the `temporal` CLI, maybe for another cluster) does not
    chosen = bool(env.get("TEMPORAL_CONFIG_FILE") or env.get("TEMPORAL_PROFILE"))
    if embedded_address and (settings.temporal_address or ("" if chosen else embedded_address)) == embedded_address:
        profile: dict[str, Any] = {}  # the embedded stack: no profile is read (nor can a broken one stop it)
    else:
        profile = _load_profile(env)

    profile_address = profile.get("target_host") or ""
    profile_source = f"Temporal profile {env.get('TEMPORAL_PROFILE') or 'default'}"
    if settings.temporal_address:
        address = settings.temporal_address
        source = "TEMPORAL_ADDRESS" if env.get("TEMPORAL_ADDRESS") == address else "Egis settings"
    elif profile_address and chosen:
        address, source = profile_address, profile_source
    elif embedded_address:
        address, source = embedded_address, "embedded stack"
    elif profile_address:
        address, source = profile_address, profile_source
    else:
        raise StackError(
            "no Temporal server: set TEMPORAL_ADDRESS (or a Temporal client profile: TEMPORAL_CONFIG_FILE / "
            f"TEMPORAL_PROFILE), or start the embedded stack with `egis dev up` (data dir {settings.data_dir})"
        )

    if embedded_address and address == embedded_address:
        namespace = settings.temporal_namespace if explicit_namespace else running.get("temporal_namespace")
        return ConnectOptions(
            target_host=address, namespace=namespace or settings.temporal_namespace, embedded=True, source=source
        )

    namespace = settings.temporal_namespace if explicit_namespace else profile.get("namespace")
    options = ConnectOptions(
        target_host=address,
        namespace=namespace or settings.temporal_namespace,
        api_key=profile.get("api_key"),
        tls=profile.get("tls", False),
        rpc_metadata=dict(profile.get("rpc_metadata") or {}),
        source=source,
    )
    _register_secrets(options)
    return options


def _register_secrets(options: ConnectOptions) -> None:
    redact.register(options.api_key, *options.rpc_metadata.values())
    if isinstance(options.tls, TLSConfig) and options.tls.client_private_key:
        key = options.tls.client_private_key.decode(errors="replace")
        redact.register(key, *(line for line in key.splitlines() if "-----" not in line))


def register_search_attributes_by_default(settings: Settings, options: ConnectOptions) -> bool:
    """`EGIS_REGISTER_SEARCH_ATTRIBUTES` when set; otherwise only on the embedded stack."""
    if settings.register_search_attributes is not None:
        return settings.register_search_attributes
    return options.embedded


# ---------------------------------------------------------------- connecting
async def connect(
    target: Settings | ConnectOptions | str, namespace: str | None = None, *, runtime: Runtime | None = None
) -> Client:
    """A client for `target`: Egis settings (resolved as above), resolved options, or a plain
    `host:port` (no TLS: tests and local tools) with `namespace`."""
    if isinstance(target, str):
        options = ConnectOptions(target_host=target, namespace=namespace or "default", source="address")
    elif isinstance(target, ConnectOptions):
        options = target
    else:
        options = resolve_connect_options(target)
    return await Client.connect(
        options.target_host,
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=tracing_interceptors(),
        **options.connect_kwargs(),
    )


# ---------------------------------------------------------------- tracing (optional extra)
_tracing: list[Interceptor] | None = None


def tracing_interceptors() -> list[Interceptor]:
    """`[TracingInterceptor]` exporting to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set and the
    `otel` extra is installed; `[]` otherwise. Set up once per process (the tracer provider is
    global); workers inherit the client's interceptor."""
    global _tracing  # noqa: PLW0603
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint:
        return []
    if _tracing is not None:
        return _tracing
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor

        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    except ImportError as exc:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed (%s; pip install 'egis[otel]'): "
            "tracing is off",
            exc.name or exc,
        )
        _tracing = []
        return _tracing
    named = bool(os.environ.get("OTEL_SERVICE_NAME"))
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "egis"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: from OTEL_* env
    trace.set_tracer_provider(provider)
    _tracing = [TracingInterceptor(provider.get_tracer("egis"))]
    log.info("tracing: OpenTelemetry spans to %s (%s)", endpoint, protocol)
    return _tracing


def flush_tracing(timeout_millis: int = 5000) -> None:
    """Export the spans still queued (call before a hard exit); a no-op without tracing."""
    if _tracing:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_millis)


# ---------------------------------------------------------------- search attributes
class MissingSearchAttributes(StackError):
    """The namespace lacks custom search attributes the workflows set; an operator adds them once."""

    def __init__(self, namespace: str, missing: Sequence[str], address: str = "", reason: str = "") -> None:
        self.namespace = namespace
        self.missing = list(missing)
        names = ", ".join(self.missing)
        self_hosted = ["temporal", "operator", "search-attribute", "create"]
        if address:
            self_hosted += ["--address", address]
        self_hosted += ["--namespace", namespace]
        for name in self.missing:  # the CLI pairs each --name with its own --type
            self_hosted += ["--name", name, "--type", "Keyword"]
        cloud = ["tcld", "namespace", "search-attributes", "add", "--namespace", namespace]
        for name in self.missing:
            cloud += ["--search-attribute", f"{name}=Keyword"]
        self.commands = {"self-hosted": shlex.join(self_hosted), "Temporal Cloud": shlex.join(cloud)}
        message = (
            f"Temporal namespace {namespace!r} lacks the search attributes Egis needs: {names} (all Keyword)"
            + (f"; {reason}" if reason else "")
            + ". Add them once, then start the worker again:\n"
            f"  self-hosted:    {self.commands['self-hosted']}\n"
            f"                  (with the same TLS / API key flags or profile as the worker)\n"
            f"  Temporal Cloud: {self.commands['Temporal Cloud']}\n"
            "                  (or in the Cloud UI: Namespaces > the namespace > Custom Search Attributes)\n"
            "Or set EGIS_REGISTER_SEARCH_ATTRIBUTES=true to let the worker add them where it may "
            "(self-hosted without an authorizer, or with namespace-admin rights; never on Temporal Cloud)."
        )
        super().__init__(message, namespace=namespace, missing=self.missing)


async def missing_search_attributes(client: Client) -> list[str]:
    """The project's search attributes the client's namespace does not know (in ALL_SEARCH_ATTRIBUTES order).

    Lists them through OperatorService; where that call is refused (it is an admin API: Temporal
    Cloud, or an authorizer), asks visibility instead: a query on an unknown attribute fails
    with INVALID_ARGUMENT.
    """
    from egis.models import ALL_SEARCH_ATTRIBUTES

    names = [k.name for k in ALL_SEARCH_ATTRIBUTES]
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError as exc:
        if exc.status not in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            raise
        log.info("listing search attributes was refused (%s); probing with visibility queries", exc.status.name)
        missing = []
        for name in names:
            try:
                await client.count_workflows(f"{name} = 'egis-probe'")
            except RPCError as probe:
                if probe.status != RPCStatusCode.INVALID_ARGUMENT:
                    raise
                missing.append(name)
        return missing
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    return [name for name in names if name not in known]


async def check_search_attributes(client: Client, *, register: bool, address: str = "") -> list[str]:
    """At worker start: nothing missing → `[]`; missing and `register` → add them, return the
    names added; otherwise (or when adding is refused) raise `MissingSearchAttributes`."""
    missing = await missing_search_attributes(client)
    if not missing:
        return []
    if not register:
        raise MissingSearchAttributes(client.namespace, missing, address)
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing},
            )
        )
    except RPCError as exc:
        reason = f"the worker may not add them ({exc.status.name}: {exc.message})"
        raise MissingSearchAttributes(client.namespace, missing, address, reason) from None
    return missing


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register the project's search attributes if missing; returns those added (tests, tools)."""
    return await check_search_attributes(client, register=True)
