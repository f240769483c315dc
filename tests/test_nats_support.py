"""The NATS harness is what it says: real TLS, NKEY users, least-privilege permissions, loopback.

The fast tests check what the harness generates (seeds nkeys can read, certificates
that chain to the CA, a config nats-server accepts and that binds only 127.0.0.1);
the slow ones start nats-server and show mutual TLS and NKEY authentication refusing
strangers, and the per-relay permissions letting h1 publish to h2 but never read
what is h2's -- not by subscribing, not through a consumer of its own, not through
h2's consumer, not by reading the stream, not by snooping h2's inbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
from pathlib import Path

import nats
import nats.errors
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ccc_relay.federation.link import tls_context
from ccc_relay.federation.subjects import consumer_name, inbox_prefix, subject_for
from ccc_relay.policy.config_types import FederationConfig
from tests.nats_support import (
    NATS_SERVER,
    STREAM,
    CertificateAuthority,
    NatsCluster,
    NatsServer,
    NkeyUser,
    Pki,
    RelayIdentity,
    nats_server_missing,
    relay_permissions,
)

pytest_plugins = ("tests.nats_fixtures",)


def test_nkey_seeds_round_trip_through_nkeys() -> None:
    user = NkeyUser.generate()
    assert user.seed.startswith(b"SU") and user.public_key.startswith("U")
    pair = nkeys.from_seed(bytearray(user.seed))
    assert pair.public_key.decode() == user.public_key
    signature = pair.sign(b"nonce")
    assert pair.verify(b"nonce", signature)
    assert NkeyUser.generate().seed != user.seed


def test_seeds_follow_the_nkey_format() -> None:
    """base32 of: seed prefix and user role in two bytes, 32 random bytes, CRC16 (little end)."""
    seed = NkeyUser.generate().seed
    raw = base64.b32decode(seed + b"=" * (-len(seed) % 8))
    assert len(raw) == 2 + 32 + 2
    assert raw[0] & 0b11111000 == nkeys.PREFIX_BYTE_SEED
    assert ((raw[0] & 0b111) << 5) | (raw[1] >> 3) == nkeys.PREFIX_BYTE_USER
    assert raw[-2:] == bytes(nkeys.crc16_checksum(raw[:-2]))


def test_certificates_chain_to_the_ca_and_name_the_loopback(tmp_path: Path) -> None:
    pki = Pki(tmp_path, hosts=("h1",))
    ca = pki.ca.cert
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(pki.relays["h1"].cert.read_bytes())
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # Secrets are 0600; the link's TLS context loads the relay's pair.
    for secret in (pki.server_key, pki.relays["h1"].key, pki.relays["h1"].nkey_seed):
        assert secret.stat().st_mode & 0o777 == 0o600
    identity = pki.relays["h1"]
    config = FederationConfig(**identity.config_fields(["tls://127.0.0.1:1"]))
    assert isinstance(tls_context(config), ssl.SSLContext)


def test_another_ca_does_not_sign_for_this_one(tmp_path: Path) -> None:
    pki = Pki(tmp_path, hosts=("h1",))
    stranger = pki.identity("h1", ca=CertificateAuthority(tmp_path / "other", name="other CA"))
    cert = x509.load_pem_x509_certificate(stranger.cert.read_bytes())
    with pytest.raises(ValueError, match=r"signature|Issuer"):
        cert.verify_directly_issued_by(pki.ca.cert)
    assert isinstance(pki.ca.key, ec.EllipticCurvePrivateKey)


def test_the_server_config_binds_loopback_only_and_verifies_clients(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cluster = NatsCluster(tmp_path, pki)
    for node in cluster.nodes:
        conf = node.config()
        addresses = [conf["listen"], conf["http"], conf["cluster"]["listen"]]
        addresses += [r.removeprefix("nats://") for r in conf["cluster"]["routes"]]
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
        assert conf["tls"]["verify"] is True
        assert str(tmp_path) in conf["jetstream"]["store_dir"]
        users = conf["authorization"]["users"]
        relays = {r.nkey.public_key for r in pki.relays.values()}
        assert {u["nkey"] for u in users} == relays | {pki.operator.nkey.public_key}
        assert "password" not in json.dumps(users)
    if nats_server_missing():
        pytest.skip(nats_server_missing() or "")
    node = cluster.nodes[0]
    node.directory.mkdir(parents=True, exist_ok=True)
    node.config_file.write_text(json.dumps(node.config()))
    checked = subprocess.run(
        [NATS_SERVER, "-t", "-c", str(node.config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_permissions_name_only_the_relays_own_consumer_and_inbox(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    conf = NatsServer(tmp_path, pki).config()
    by_key = {u["nkey"]: u["permissions"] for u in conf["authorization"]["users"]}
    h1 = by_key[pki.relays["h1"].nkey.public_key]
    assert h1["subscribe"] == {"allow": ["_ccc_inbox.h1.>"]}
    readable = [s for s in h1["publish"]["allow"] if "CONSUMER" in s or "$JS.ACK" in s]
    assert readable and all(consumer_name("h1") in s for s in readable)
    assert "h2" not in json.dumps(h1)
    # The operator's user may create the stream and nothing else.
    operator = by_key[pki.operator.nkey.public_key]
    assert operator["publish"] == {"allow": [f"$JS.API.STREAM.CREATE.{STREAM}"]}


def test_relays_may_be_denied_creating_the_stream(tmp_path: Path) -> None:
    pki = Pki(tmp_path, relays_create_stream=False)
    conf = NatsServer(tmp_path, pki).config()
    by_key = {u["nkey"]: u["permissions"] for u in conf["authorization"]["users"]}
    for host, identity in pki.relays.items():
        allowed = by_key[identity.nkey.public_key]["publish"]["allow"]
        assert not [s for s in allowed if "STREAM.CREATE" in s], allowed
        assert allowed == [
            s for s in relay_permissions(host)["publish"]["allow"] if "STREAM.CREATE" not in s
        ]


# --- against a real server -------------------------------------------------------------


async def _connect(
    server: NatsServer, identity: RelayIdentity, errors: list[str] | None = None, **options: object
) -> nats.aio.client.Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    config = FederationConfig(**identity.config_fields(server.urls))
    context = tls_context(config)
    settings: dict[str, object] = {
        "servers": server.urls,
        "tls": context,
        "nkeys_seed": str(identity.nkey_seed),
        "inbox_prefix": inbox_prefix(identity.host),
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "connect_timeout": 5,
        "error_cb": on_error,
    }
    settings.update(options)
    return await nats.connect(**settings)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_relay_with_the_right_certificate_and_nkey_connects(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        nc = await _connect(nats_server, nats_server.relays["h1"])
        assert nc.is_connected
        await nc.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_strangers_cannot_connect(nats_server: NatsServer, tmp_path: Path) -> None:
    pki = nats_server.pki
    good = pki.relays["h1"]
    other_ca = CertificateAuthority(tmp_path / "other", name="other CA")
    foreign_cert = pki.identity("h1", ca=other_ca)
    unknown_nkey = pki.identity("h9")  # a certificate from the right CA, an unknown NKEY

    async def refused(identity: RelayIdentity, **options: object) -> str:
        errors: list[str] = []
        with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)) as caught:
            await _connect(nats_server, identity, errors, **options)
        return " ".join([str(caught.value), *errors])

    async def scenario() -> None:
        no_certificate = ssl.create_default_context(cafile=str(good.ca))
        await refused(good, tls=no_certificate)
        await refused(foreign_cert)
        text = await refused(unknown_nkey)
        assert "authorization violation" in text.lower(), text
        # The control: the same calls succeed for the relay the server knows.
        nc = await _connect(nats_server, good)
        await nc.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_relay_can_send_to_another_but_never_read_its_subject(nats_server: NatsServer) -> None:
    h1, h2 = nats_server.relays["h1"], nats_server.relays["h2"]

    async def denied(nc: nats.aio.client.Client, errors: list[str], subject: str) -> None:
        """A request on ``subject`` gets no answer, and the server says why."""
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(subject, b"{}", timeout=1.0)
        await nc.flush()
        assert any(
            "permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors
        ), errors

    async def scenario() -> None:
        # h2's relay makes the stream and its consumer (what its link does).
        nc2 = await _connect(nats_server, h2)
        js2 = nc2.jetstream()
        await js2.add_stream(name=STREAM, subjects=["ccc.v1.*"], retention="workqueue")
        await js2.add_consumer(
            STREAM, name=consumer_name("h2"), durable_name=consumer_name("h2"),
            filter_subject=subject_for("h2"), ack_policy="explicit",
        )  # fmt: skip

        errors: list[str] = []
        nc1 = await _connect(nats_server, h1, errors)
        js1 = nc1.jetstream()
        ack = await js1.publish(subject_for("h2"), b"for h2 only", headers={"Nats-Msg-Id": "m1"})
        assert ack.stream == STREAM

        # Subscribing to h2's subject, or to h2's inbox where its pulled messages arrive.
        for subject in (subject_for("h2"), "ccc.v1.*", f"{inbox_prefix('h2')}.>", ">"):
            await nc1.subscribe(subject)
            await nc1.flush()
            await asyncio.sleep(0.2)
            assert any(
                "permissions violation" in e.lower() and subject.lower() in e.lower()
                for e in errors
            ), errors
        # A consumer of its own on h2's subject, in both create forms; h2's consumer;
        # reading the stream's messages directly.
        foreign = consumer_name("h1")
        for subject in (
            f"$JS.API.CONSUMER.CREATE.{STREAM}.{foreign}.{subject_for('h2')}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{foreign}",
            f"$JS.API.CONSUMER.CREATE.{STREAM}",
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer_name('h2')}",
            f"$JS.API.STREAM.MSG.GET.{STREAM}",
            f"$JS.API.DIRECT.GET.{STREAM}",
            f"$JS.API.CONSUMER.DELETE.{STREAM}.{consumer_name('h2')}",
            f"$JS.API.STREAM.UPDATE.{STREAM}",
            f"$JS.API.STREAM.PURGE.{STREAM}",
        ):
            await denied(nc1, errors, subject)
        await nc1.close()

        # The message is still there, whole, for h2.
        sub = await js2.pull_subscribe_bind(consumer=consumer_name("h2"), stream=STREAM)
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"for h2 only"
        await msg.ack()
        await nc2.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_cluster_keeps_a_three_replica_stream_when_a_node_dies(
    nats_cluster: NatsCluster,
) -> None:
    h1 = nats_cluster.relays["h1"]

    async def scenario() -> None:
        nc = await _connect(nats_cluster.nodes[0], h1, servers=nats_cluster.urls)
        js = nc.jetstream()
        info = await js.add_stream(name=STREAM, subjects=["ccc.v1.*"], num_replicas=3)
        assert info.config.num_replicas == 3
        await js.publish(subject_for("h2"), b"before", headers={"Nats-Msg-Id": "a"})
        await nc.close()

        nats_cluster.kill(2)
        assert not nats_cluster.nodes[2].running
        nc = await _connect(nats_cluster.nodes[0], h1, servers=nats_cluster.urls[:2])
        js = nc.jetstream()
        for _ in range(100):  # a new stream leader, if node 3 led it
            try:
                await js.publish(subject_for("h2"), b"after", headers={"Nats-Msg-Id": "b"})
                break
            except nats.errors.Error:
                await asyncio.sleep(0.2)
        info = await js.stream_info(STREAM)
        assert info.state.messages == 2
        await nc.close()

    asyncio.run(scenario())
