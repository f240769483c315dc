"""The envelope one relay hands another: its encoding, what its signature covers,
and that only the registered key of the claimed host verifies it."""

from __future__ import annotations

import base64
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.daemon.signing import MessageSigner, PeerKeys
from ccc_relay.protocol.federation import (
    DOMAIN,
    MAX_ENVELOPE,
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    signed_bytes,
    subject_for,
)

ENVELOPE = Envelope(
    kind="message",
    id="m_abcdefgh1f",
    from_host="h1",
    to_host="h2",
    sender="alice",
    recipient="bob",
    sent_at=1_700_000_000.25,
    body="hello \u00e9",
    thread="t1",
)


def public(signer: MessageSigner) -> str:
    return signer.public_key_b64()


def test_signed_bytes_are_every_field_but_sig_in_one_order() -> None:
    data = signed_bytes(ENVELOPE)
    assert data.startswith(DOMAIN)
    assert data == signed_bytes(msgspec.structs.replace(ENVELOPE, sig="anything"))
    assert data[len(DOMAIN) :] == (
        b'{"kind":"message","id":"m_abcdefgh1f","from_host":"h1","to_host":"h2",'
        b'"sender":"alice","recipient":"bob","sent_at":1700000000.25,'
        b'"body":"hello \xc3\xa9","thread":"t1","reply_to":null,"deliver_at":null,'
        b'"code":null,"reason":null,"sig":""}'
    )
    for field, value in [
        ("kind", "refused"),
        ("id", "m_abcdefgh20"),
        ("from_host", "h3"),
        ("to_host", "h3"),
        ("sender", "mallory"),
        ("recipient", "carol"),
        ("sent_at", 1.0),
        ("body", "hello"),
        ("thread", None),
        ("reply_to", "m_abcdefgh01"),
        ("deliver_at", 5.0),
        ("code", "forbidden"),
        ("reason", "no"),
    ]:
        changed = msgspec.structs.replace(ENVELOPE, **{field: value})
        assert signed_bytes(changed) != data, field


def test_round_trip_and_stream_ids() -> None:
    assert decode_envelope(encode_envelope(ENVELOPE)) == ENVELOPE
    refused = msgspec.structs.replace(ENVELOPE, kind="refused", code="forbidden", reason="no")
    assert ENVELOPE.stream_id == "m_abcdefgh1f" and refused.stream_id == "refused:m_abcdefgh1f"
    assert ENVELOPE.sender_address == "alice@h1"
    assert subject_for("h2") == "ccc.v1.h2"


@pytest.mark.parametrize(
    "change",
    [
        {"to_host": "H2"},
        {"from_host": "h1.*"},
        {"sender": "alice@h0"},
        {"kind": "note"},
        {"id": "../x"},
        {"extra": 1},
    ],
)
def test_a_bad_envelope_is_refused(change: dict[str, object]) -> None:
    raw = msgspec.json.decode(encode_envelope(ENVELOPE))
    raw.update(change)
    with pytest.raises(EnvelopeError, match="not a valid envelope"):
        decode_envelope(msgspec.json.encode(raw))


def test_junk_and_oversize_are_refused() -> None:
    with pytest.raises(EnvelopeError, match="not JSON"):
        decode_envelope(b"\xff{")
    with pytest.raises(EnvelopeError, match="over the"):
        decode_envelope(b" " * (MAX_ENVELOPE + 1))


def test_only_the_registered_key_of_the_claimed_host_verifies(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    h1 = MessageSigner.load_or_create(tmp_path / "a")
    other = MessageSigner.load_or_create(tmp_path / "b")
    signed = msgspec.structs.replace(ENVELOPE, sig=h1.sign_bytes(signed_bytes(ENVELOPE)))
    peers = PeerKeys({"h1": public(h1), "h3": public(other)})
    assert peers.verify("h1", signed_bytes(signed), signed.sig)
    assert not peers.verify("h3", signed_bytes(signed), signed.sig)  # another host's key
    assert not peers.verify("h9", signed_bytes(signed), signed.sig)  # nobody registered h9
    tampered = msgspec.structs.replace(signed, body="hello!")
    assert not peers.verify("h1", signed_bytes(tampered), tampered.sig)
    assert not peers.verify("h1", signed_bytes(signed), "not base64!")
    forged = other.sign_bytes(signed_bytes(ENVELOPE))  # h3 claims to be h1
    assert not peers.verify("h1", signed_bytes(ENVELOPE), forged)
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert len(base64.b64decode(base64.b64encode(raw))) == 32
