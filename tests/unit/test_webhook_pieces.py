"""Pure pieces of outgoing webhooks: Standard Webhooks signatures (checked with the
``standardwebhooks`` library), which addresses are public, the retry schedule."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from stallholder.events.webhooks import MAX_ATTEMPTS, check_event_filter, retry_delay
from stallholder.kit.addresses import is_allowed_port, is_public_address, parse_address
from stallholder.kit.signing import new_webhook_secret, sign, signature_header


def test_our_signature_is_the_one_the_library_computes() -> None:
    secret = new_webhook_secret()
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    body = b'{"id":"evt_1","type":"order.paid"}'
    ours = sign(secret, message_id="evt_1", timestamp=int(at.timestamp()), body=body)
    assert ours == Webhook(secret).sign("evt_1", at, body.decode())


def test_a_known_vector() -> None:
    # The example of the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, message_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_during_a_rotation_the_header_carries_one_signature_per_secret() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    now = datetime.now(UTC)
    body = b"{}"
    header = signature_header(
        [new, old], message_id="evt_2", timestamp=int(now.timestamp()), body=body
    )
    headers = {
        "webhook-id": "evt_2",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": header,
    }
    assert len(header.split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_webhook_secret()).verify(body, headers)


def test_a_secret_must_be_whsec() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        sign("sk_live_x", message_id="m", timestamp=1, body=b"")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        # 6to4 (2002::/16) embedding 127.0.0.1, 169.254.169.254, 10.0.0.1; and 8.8.8.8
        ("2002:7f00:1::", False),
        ("2002:a9fe:a9fe::", False),
        ("2002:a00:1::1", False),
        ("2002:808:808::", True),
        # Teredo: server 65.54.227.120, client 192.0.2.45 (documentation) / 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),
        # Teredo with a loopback server
        ("2001:0:7f00:1:8000:63bf:f7f7:f7f7", False),
        # NAT64 well-known prefix embedding 127.0.0.1, 169.254.169.254; and 8.8.8.8
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::808:808", True),
        # NAT64 local-use prefix and IPv4-compatible addresses lead only inward
        ("64:ff9b:1::a9fe:a9fe", False),
        ("64:ff9b:1::808:808", False),
        ("::127.0.0.1", False),
        ("::8.8.8.8", False),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(("port", "allowed"), [(0, False), (1, True), (443, True), (65_535, True)])
def test_port_zero_is_refused(port: int, allowed: bool) -> None:
    assert is_allowed_port(port) is allowed


def test_addresses_are_parsed_from_url_hosts() -> None:
    assert parse_address("[::1]") == ipaddress.ip_address("::1")
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_address("example.com") is None


def test_the_retry_schedule_spans_about_three_days() -> None:
    delays = [retry_delay(n) for n in range(1, MAX_ATTEMPTS + 1)]
    assert delays[:3] == [timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30)]
    assert delays[-1] is None
    total = sum((d for d in delays if d is not None), timedelta())
    assert timedelta(days=2, hours=23) <= total <= timedelta(days=3, hours=1)


def test_event_filters() -> None:
    assert check_event_filter(["*"]) == ["*"]
    assert check_event_filter(["order.paid", "refund.created", "order.paid"]) == [
        "order.paid",
        "refund.created",
    ]
