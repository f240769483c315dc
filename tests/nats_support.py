"""The federation tests' NATS: real nats-server processes on loopback, set up like production.

Everything a test needs is generated for it under one directory:

* a CA, a server certificate for 127.0.0.1/localhost and one client certificate per
  relay (mutual TLS: the server refuses a client without a certificate from this CA);
* one NKEY user per relay (seed file 0600 and public key), and one for the NATS
  operator, who may only create the stream (docs/federation.md step 3): the server's
  only users;
* per-user permissions: a relay may publish to ``ccc.v1.*`` and only the JetStream API
  subjects its own durable pull consumer needs (see ``relay_permissions``), and may
  subscribe only under its own inbox prefix (``inbox_prefix``), so it can neither read
  another relay's subject nor see the replies and deliveries meant for another relay;
* a nats-server config: JetStream on (store in the directory), client port, monitoring
  port and cluster port all on 127.0.0.1 at free ports, nothing else.

``NatsServer`` is one server (start, stop, kill, restart on the same port and store);
``NatsCluster`` is three of them routed to each other, so a stream can have three
replicas and survive one node being killed. The fixtures ``nats_server`` and
``nats_cluster`` hand them to a test module that says
``pytest_plugins = ("tests.nats_fixtures",)``; tests using them are marked slow.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccc_relay.federation.link import consumer_name, inbox_prefix, subject_for

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STREAM = "CCC_FEDERATION"
HOSTS = ("h1", "h2", "h3")
# A loaded two-core CI machine can take seconds to start a server or elect a leader.
READY_TIMEOUT = 30.0
STOP_GRACE = 10.0


def nats_server_missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if not Path(NATS_SERVER).exists():
        return "nats-server is not installed (apt-get install nats-server)"
    return None


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- secrets: certificates and NKEYs ---------------------------------------------------


def _write_secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class CertificateAuthority:
    """A test CA that signs server and client certificates into ``directory``."""

    directory: Path
    name: str = "ccc test CA"
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.cert = (
            self._builder(subject, self.key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        slug = self.name.replace(" ", "-")
        self.ca_file = self.directory / f"{slug}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, common_name: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate and its key (0600) for a server (127.0.0.1, localhost) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]),
                critical=False,
            )  # fmt: skip
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.directory / f"{common_name}.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = _write_secret(self.directory / f"{common_name}-key.pem", _pem_key(key))
        return cert_file, key_file


@dataclass(frozen=True)
class NkeyUser:
    """An NKEY user: the seed (secret, ``SU...``) and the public key (``U...``)."""

    seed: bytes
    public_key: str

    @classmethod
    def generate(cls) -> NkeyUser:
        seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        public = nkeys.from_seed(bytearray(seed)).public_key
        return cls(seed=seed, public_key=public.decode())

    def write(self, path: Path) -> Path:
        return _write_secret(path, self.seed + b"\n")


@dataclass(frozen=True)
class RelayIdentity:
    """What one relay (one host) needs to join: its certificate, key, CA and NKEY seed file."""

    host: str
    ca: Path
    cert: Path
    key: Path
    nkey_seed: Path
    nkey: NkeyUser

    def config_fields(self, servers: Sequence[str], **overrides: Any) -> dict[str, Any]:
        """The fields of a ``FederationConfig`` for this relay (peers left empty)."""
        fields: dict[str, Any] = {
            "host": self.host,
            "servers": tuple(servers),
            "tls_ca": self.ca,
            "tls_cert": self.cert,
            "tls_key": self.key,
            "nkey_seed": self.nkey_seed,
            "credentials": None,
            "stream": STREAM,
            "publish_timeout": 5.0,
            "peers": {},
        }
        fields.update(overrides)
        return fields


def relay_permissions(
    host: str, stream: str = STREAM, *, create_stream: bool = True
) -> dict[str, Any]:
    """The least a relay needs: publish anywhere in ``ccc.v1.*``, read only its own consumer.

    Publish: the federation subjects; the stream's INFO and CREATE (the link ensures the
    stream, it never updates or deletes it; without ``create_stream`` the operator made
    it and no relay may); its own consumer's INFO, its CREATE in the
    form that names the filter subject in the API subject (so the server refuses a
    relay-h1 consumer filtered on another host's subject -- the legacy
    ``CONSUMER.DURABLE.CREATE`` form, which does not, stays denied); the pull request
    (``MSG.NEXT``) and the acks of its own consumer. Subscribe: its own inbox prefix only,
    where the API replies, publish-acks and pulled messages arrive.
    """
    consumer = consumer_name(host)
    api = "$JS.API"
    create = [f"{api}.STREAM.CREATE.{stream}"] if create_stream else []
    return {
        "publish": {
            "allow": [
                "ccc.v1.*",
                f"{api}.STREAM.INFO.{stream}",
                *create,
                f"{api}.CONSUMER.INFO.{stream}.{consumer}",
                f"{api}.CONSUMER.CREATE.{stream}.{consumer}.{subject_for(host)}",
                f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                f"$JS.ACK.{stream}.{consumer}.>",
            ]
        },
        "subscribe": {"allow": [f"{inbox_prefix(host)}.>"]},
    }


OPERATOR_INBOX = "_ccc_operator"


def operator_permissions(stream: str = STREAM) -> dict[str, Any]:
    """The NATS operator's user in the tests: it may create the stream, nothing else."""
    return {
        "publish": {"allow": [f"$JS.API.STREAM.CREATE.{stream}"]},
        "subscribe": {"allow": [f"{OPERATOR_INBOX}.>"]},
    }


@dataclass
class Pki:
    """The CA, the server certificate and every relay's identity, generated under ``directory``."""

    directory: Path
    hosts: tuple[str, ...] = HOSTS
    # False: the relays may not create the stream; the operator user makes it.
    relays_create_stream: bool = True
    ca: CertificateAuthority = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    relays: dict[str, RelayIdentity] = field(init=False)
    operator: RelayIdentity = field(init=False)

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority(self.directory / "pki")
        self.server_cert, self.server_key = self.ca.issue("nats-server", server=True)
        self.relays = {host: self.identity(host) for host in self.hosts}
        self.operator = self.identity("operator")

    def identity(self, host: str, *, ca: CertificateAuthority | None = None) -> RelayIdentity:
        """An identity for ``host``; with another ``ca`` its certificate is not trusted here.

        Only the identities made at construction are users of the server.
        """
        signer = ca or self.ca
        cert, key = signer.issue(f"relay-{host}", server=False)
        nkey = NkeyUser.generate()
        seed_file = nkey.write(signer.directory / f"{host}.nk")
        return RelayIdentity(host, self.ca.ca_file, cert, key, seed_file, nkey)

    def users(self) -> list[dict[str, Any]]:
        relays = [
            {
                "nkey": identity.nkey.public_key,
                "permissions": relay_permissions(host, create_stream=self.relays_create_stream),
            }
            for host, identity in self.relays.items()
        ]
        operator = {"nkey": self.operator.nkey.public_key, "permissions": operator_permissions()}
        return [*relays, operator]


# --- servers ---------------------------------------------------------------------------


@dataclass
class NatsServer:
    """One nats-server process; its ports and store survive ``kill``/``stop`` and ``start``."""

    directory: Path
    pki: Pki
    name: str = "n1"
    port: int = field(default_factory=free_loopback_port)
    http_port: int = field(default_factory=free_loopback_port)
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [self.url]

    @property
    def relays(self) -> dict[str, RelayIdentity]:
        return self.pki.relays

    @property
    def config_file(self) -> Path:
        return self.directory / f"{self.name}.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    def config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "server_name": self.name,
            "listen": f"127.0.0.1:{self.port}",
            "http": f"127.0.0.1:{self.http_port}",
            "jetstream": {
                "store_dir": str(self.directory / f"{self.name}-js"),
                "max_memory_store": 64 * 1024 * 1024,
                "max_file_store": 1024 * 1024 * 1024,
            },
            "tls": {
                "cert_file": str(self.pki.server_cert),
                "key_file": str(self.pki.server_key),
                "ca_file": str(self.pki.ca.ca_file),
                "verify": True,
                "timeout": 5,
            },
            "authorization": {"users": self.pki.users()},
        }
        if self.cluster_port is not None:
            conf["cluster"] = {
                "name": "ccc-test",
                "listen": f"127.0.0.1:{self.cluster_port}",
                "routes": [f"nats://127.0.0.1:{port}" for port in self.routes],
            }
        return conf

    def start(self, *, wait: bool = True) -> None:
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # nats-server reads JSON: its config language is a superset of it.
        self.config_file.write_text(json.dumps(self.config(), indent=2))
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """The monitoring port answers /healthz with ok (JetStream is current)."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise TimeoutError(f"nats-server {self.name} not ready in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class NatsCluster:
    """Three routed nats-servers on loopback sharing one ``Pki``."""

    directory: Path
    pki: Pki
    size: int = 3
    nodes: list[NatsServer] = field(init=False)

    def __post_init__(self) -> None:
        cluster_ports = [free_loopback_port() for _ in range(self.size)]
        self.nodes = [
            NatsServer(
                self.directory,
                self.pki,
                name=f"n{i + 1}",
                cluster_port=cluster_ports[i],
                routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
            )
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def relays(self) -> dict[str, RelayIdentity]:
        return self.pki.relays

    def start(self) -> None:
        # All at once: JetStream elects its meta leader only when a quorum has met.
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()

    def kill(self, index: int) -> NatsServer:
        node = self.nodes[index]
        node.kill()
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def nats_pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "nats")


@pytest.fixture
def nats_server(tmp_path: Path, nats_pki: Pki) -> Iterator[NatsServer]:
    missing = nats_server_missing()
    if missing:
        pytest.skip(missing)
    server = NatsServer(tmp_path / "nats", nats_pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path, nats_pki: Pki) -> Iterator[NatsCluster]:
    missing = nats_server_missing()
    if missing:
        pytest.skip(missing)
    cluster = NatsCluster(tmp_path / "nats", nats_pki)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
