"""A test double of Stripe's API, for exactly the endpoints Stallholder calls.

It follows Stripe's published API reference for those endpoints: form-encoded requests
with bracketed keys (``transfer_data[destination]``, ``expand[0]``), JSON objects with
Stripe's id prefixes and ``object`` fields, Stripe's error shape
``{"error": {"type", "code", "decline_code", "message", "param"}}`` with its HTTP statuses
(402 card errors, 400 invalid requests, 404 unknown objects, 401 bad keys), idempotent
replay of a POST by ``Idempotency-Key`` (another request under the same key is an
``idempotency_error``), Stripe's test payment methods, and webhooks signed as Stripe
signs them. It is served by uvicorn on 127.0.0.1 and the real ``stripe`` SDK talks to it.

Endpoints: POST /v1/accounts, POST /v1/account_links, POST /v1/customers,
POST /v1/payment_methods (with the publishable key in the form's ``key``, as Stripe.js
sends it: a test card number becomes a PaymentMethod), POST /v1/payment_methods/{id}/attach,
POST /v1/payment_methods/{id}/detach, POST /v1/payment_intents, POST /v1/refunds,
POST /v1/setup_intents, GET /v1/setup_intents/{id} and POST /v1/setup_intents/{id}/confirm
(also with the publishable key and the ``client_secret``, as Stripe.js calls them; the
SetupIntent it sees then has no ``customer`` or ``metadata``), GET /v1/disputes/{id},
POST /v1/transfers, POST /v1/transfers/{id}/reversals.

Money at the connected accounts is tracked the way destination charges move it: the
charge's amount is transferred, the application fee comes back to the platform, and a
refund with ``reverse_transfer`` and ``refund_application_fee`` reverses both in
proportion. Separate charges and transfers move it the other way: a platform charge (with
a ``transfer_group``) stays on the platform, a Transfer adds to the connected account and a
transfer reversal takes back from it. ``connected_balance`` shows the result.

Two routes are test controls, not Stripe's API:
``POST /_test/payment_intents/{id}/authenticate`` and
``POST /_test/setup_intents/{id}/authenticate`` (``client_secret``,
``outcome=complete|fail``) are the buyer finishing 3-D Secure, what ``authenticate()`` and
``authenticate_setup()`` do, for the Stripe.js double (tests/doubles/stripe_js.js) in a
browser.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_VERSION = "2026-10-28.endive"
# Stripe's fee in the double: 2.9% + 30, as on a US card (the gateway's default estimate).
FEE_BPS = 290
FEE_FIXED = 30
_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Card:
    """How one of Stripe's test payment methods behaves."""

    brand: str
    last4: str
    # (code, decline_code, message) when every charge is declined
    decline: tuple[str, str | None, str] | None = None
    is_declined_on_attach: bool = False
    needs_authentication: bool = False
    # "Authenticate unless set up": once a SetupIntent authenticated it for off-session
    # use, charges on it need no authentication.
    is_authenticated_once_set_up: bool = False


_GENERIC_DECLINE = ("card_declined", "generic_decline", "Your card was declined.")
# Stripe's test payment methods (docs.stripe.com/testing), by their magic ids.
TEST_CARDS: dict[str, Card] = {
    "pm_card_visa": Card("visa", "4242"),
    "pm_card_mastercard": Card("mastercard", "4444"),
    "pm_card_chargeDeclined": Card(
        "visa", "0002", decline=_GENERIC_DECLINE, is_declined_on_attach=True
    ),
    "pm_card_chargeDeclinedInsufficientFunds": Card(
        "visa",
        "9995",
        decline=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ),
    "pm_card_chargeDeclinedProcessingError": Card(
        "visa",
        "0119",
        decline=(
            "processing_error",
            None,
            "An error occurred while processing your card. Try again in a little bit.",
        ),
    ),
    # Attaching succeeds; every charge then fails (a saved card that stopped working).
    "pm_card_chargeCustomerFail": Card("visa", "0341", decline=_GENERIC_DECLINE),
    "pm_card_authenticationRequired": Card("visa", "3184", needs_authentication=True),
    "pm_card_authenticationRequiredOnSetup": Card(
        "visa", "3155", needs_authentication=True, is_authenticated_once_set_up=True
    ),
}
# Stripe's test card numbers (docs.stripe.com/testing) for the test payment methods above:
# what a buyer types into the Payment Element. Any other number is refused, as Stripe
# refuses a real card in test mode.
TEST_CARD_NUMBERS: dict[str, str] = {
    "4242424242424242": "pm_card_visa",
    "5555555555554444": "pm_card_mastercard",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
    "4000000000000119": "pm_card_chargeDeclinedProcessingError",
    "4000000000000341": "pm_card_chargeCustomerFail",
    "4000002760003184": "pm_card_authenticationRequired",
    "4000002500003155": "pm_card_authenticationRequiredOnSetup",
}


class StripeApiError(Exception):
    """A response in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        decline_code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            body["code"] = code
            body["doc_url"] = f"https://docs.stripe.com/error-codes/{code.replace('_', '-')}"
        if decline_code is not None:
            body["decline_code"] = decline_code
        if param is not None:
            body["param"] = param
        body.update(extra)
        self.status = status
        self.body = {"error": body}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int
    is_replay: bool


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALPHANUMERIC) for _ in range(24))}"


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back to nested values: ``a[b]=1`` and ``c[0]=x``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    parsed: dict[str, Any] = _listify(root)
    return parsed


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    values = {key: _listify(value) for key, value in node.items()}
    if values and all(key.isdigit() for key in values):
        return [values[key] for key in sorted(values, key=int)]
    return values


def _integer(params: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise StripeApiError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeApiError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        )
    return int(value)


def _boolean(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise StripeApiError(
            400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=name
        )
    return bool(value == "true")


def _stripe_fee(amount: int) -> int:
    # Rounded half up to the minor unit.
    return min(amount, (amount * FEE_BPS + 5_000) // 10_000 + FEE_FIXED)


class StripeDouble:
    """The double's state and its ASGI app. Test controls are the public methods."""

    def __init__(
        self,
        *,
        secret_key: str = "sk_test_double",
        webhook_secret: str = "whsec_double",
        publishable_key: str = "pk_test_double",
    ) -> None:
        self.secret_key = secret_key
        self.publishable_key = publishable_key
        self.webhook_secret = webhook_secret
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.connected_balances: dict[str, int] = {}
        self._idempotent: dict[str, _Stored] = {}
        self._fail_next: list[int] = []
        # Stripe's dispute fee for a disputed PaymentIntent (``create_dispute``).
        self._dispute_fees: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/accounts", self._endpoint(self._create_account), methods=["POST"]),
                Route(
                    "/v1/account_links",
                    self._endpoint(self._create_account_link),
                    methods=["POST"],
                ),
                Route("/v1/customers", self._endpoint(self._create_customer), methods=["POST"]),
                Route(
                    "/v1/payment_methods",
                    self._endpoint(self._create_payment_method, is_publishable=True),
                    methods=["POST"],
                ),
                Route(
                    "/v1/payment_methods/{id}/attach",
                    self._endpoint(self._attach_payment_method),
                    methods=["POST"],
                ),
                Route(
                    "/v1/payment_methods/{id}/detach",
                    self._endpoint(self._detach_payment_method),
                    methods=["POST"],
                ),
                Route(
                    "/v1/payment_intents",
                    self._endpoint(self._create_payment_intent),
                    methods=["POST"],
                ),
                Route(
                    "/v1/payment_intents/{id}",
                    self._endpoint(self._retrieve_payment_intent),
                    methods=["GET"],
                ),
                Route(
                    "/v1/setup_intents",
                    self._endpoint(self._create_setup_intent),
                    methods=["POST"],
                ),
                Route(
                    "/v1/setup_intents/{id}",
                    self._endpoint(self._retrieve_setup_intent, is_publishable=True),
                    methods=["GET"],
                ),
                Route(
                    "/v1/setup_intents/{id}/confirm",
                    self._endpoint(self._confirm_setup_intent, is_publishable=True),
                    methods=["POST"],
                ),
                Route("/v1/refunds", self._endpoint(self._create_refund), methods=["POST"]),
                Route("/v1/transfers", self._endpoint(self._create_transfer), methods=["POST"]),
                Route(
                    "/v1/transfers/{id}/reversals",
                    self._endpoint(self._create_transfer_reversal),
                    methods=["POST"],
                ),
                Route("/v1/disputes/{id}", self._endpoint(self._retrieve_dispute), methods=["GET"]),
                # A test control, not Stripe's API (see the module's docstring).
                Route(
                    "/_test/payment_intents/{id}/authenticate",
                    self._authenticate_endpoint,
                    methods=["POST"],
                ),
                Route(
                    "/_test/setup_intents/{id}/authenticate",
                    self._authenticate_setup_endpoint,
                    methods=["POST"],
                ),
                Route("/{path:path}", self._unrecognized, methods=["GET", "POST", "DELETE"]),
            ]
        )

    # Test controls -------------------------------------------------------------------

    def fail_next_request(self, status: int) -> None:
        """The next request gets ``status`` before the endpoint runs (nothing is saved)."""
        self._fail_next.append(status)

    def authenticate(self, intent_id: str, *, is_successful: bool = True) -> None:
        """The buyer finishes (or fails) 3-D Secure in Stripe.js: a ``requires_action``
        PaymentIntent succeeds, or goes back to ``requires_payment_method`` with an
        ``authentication_failure``, as Stripe reports it."""
        with self._lock:
            intent = self.objects[intent_id]
            assert intent["status"] == "requires_action", intent["status"]
            intent["next_action"] = None
            if is_successful:
                self._succeed(intent)
                return
            charge = self._charge(intent, status="failed")
            charge["failure_code"] = "authentication_required"
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "payment_intent_authentication_failure",
                "decline_code": None,
                "message": "The provided PaymentMethod has failed authentication.",
                "charge": charge["id"],
            }
            intent["status"] = "requires_payment_method"

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def of_type(self, object_type: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects.values() if obj["object"] == object_type]

    def activate_account(self, account_id: str) -> None:
        """The creator finished onboarding: the account can receive transfers."""
        with self._lock:
            account = self.objects[account_id]
            account["capabilities"] = {"card_payments": "active", "transfers": "active"}
            account["charges_enabled"] = account["payouts_enabled"] = True
            account["details_submitted"] = True

    def connected_balance(self, account_id: str) -> int:
        return self.connected_balances.get(account_id, 0)

    def create_dispute(
        self,
        *,
        payment_intent: str,
        reason: str = "fraudulent",
        status: str = "needs_response",
        amount: int | None = None,
        fee: int = 0,
    ) -> dict[str, Any]:
        """The buyer's bank disputes the payment (what Stripe's dispute test cards do): all
        of it, or ``amount``. ``fee`` is Stripe's dispute fee, taken with the funds and
        given back with them when the dispute is won."""
        with self._lock:
            intent = self.objects[payment_intent]
            charge = self.objects[intent["latest_charge"]]
            self._dispute_fees[payment_intent] = fee
            dispute = {
                "id": new_id("dp"),
                "object": "dispute",
                "amount": charge["amount"] if amount is None else amount,
                "balance_transactions": [],
                "charge": charge["id"],
                "created": int(time.time()),
                "currency": charge["currency"],
                "evidence_details": {
                    "due_by": int(time.time()) + 7 * 86400,
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": payment_intent,
                "reason": reason,
                "status": status,
            }
            charge["disputed"] = True
            self._move_dispute_funds(dispute)
            self.objects[dispute["id"]] = dispute
            return copy.deepcopy(dispute)

    def update_dispute(self, dispute_id: str, *, status: str) -> dict[str, Any]:
        with self._lock:
            dispute = self.objects[dispute_id]
            dispute["status"] = status
            self._move_dispute_funds(dispute)
            return copy.deepcopy(dispute)

    def _move_dispute_funds(self, dispute: dict[str, Any]) -> None:
        held = -sum(bt["amount"] for bt in dispute["balance_transactions"])
        should_hold = (
            dispute["amount"]
            if dispute["status"]
            in (
                "needs_response",
                "under_review",
                "lost",
                "appeal_needs_response",
                "appeal_under_review",
            )
            else 0
        )
        if should_hold != held:
            amount = held - should_hold
            fee = self._dispute_fees.get(dispute["payment_intent"], 0)
            dispute["balance_transactions"].append(
                self._balance_transaction(
                    amount=amount,
                    currency=dispute["currency"],
                    fee=fee if amount < 0 else -fee,
                    type="adjustment",
                    source=dispute["id"],
                )
            )

    def event(self, type: str, obj: dict[str, Any]) -> bytes:
        """A webhook body as Stripe sends it: an event with a snapshot of ``obj``."""
        return json.dumps(
            {
                "id": new_id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": int(time.time()),
                "data": {"object": copy.deepcopy(obj)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": type,
            },
            indent=2,
        ).encode()

    def sign(
        self, payload: bytes, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        """The ``Stripe-Signature`` header Stripe sends with ``payload``:
        ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed by the whsec secret>``."""
        at = int(time.time()) if timestamp is None else timestamp
        key = (secret or self.webhook_secret).encode()
        signature = hmac.new(key, f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
        return f"t={at},v1={signature}"

    # Plumbing ------------------------------------------------------------------------

    def _endpoint(self, handler: Any, *, is_publishable: bool = False) -> Any:
        """``is_publishable``: the endpoint also takes the publishable key in the form's
        ``key`` field, as Stripe.js sends it from the buyer's browser."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            pairs = parse_qsl(body.decode() if request.method == "POST" else request.url.query)
            params = parse_form(pairs)
            key = request.headers.get("idempotency-key")
            is_browser = is_publishable and params.pop("key", None) == self.publishable_key
            status, payload, is_replay = self._handle(
                request, handler, params, pairs, key, is_browser=is_browser
            )
            with self._lock:
                self.requests.append(
                    RecordedRequest(
                        method=request.method,
                        path=request.url.path,
                        params=params,
                        idempotency_key=key,
                        status=status,
                        is_replay=is_replay,
                    )
                )
            headers = {"request-id": new_id("req")}
            if key is not None:
                headers["idempotency-key"] = key
            if is_replay:
                headers["idempotent-replayed"] = "true"
            return JSONResponse(payload, status_code=status, headers=headers)

        return endpoint

    def _handle(
        self,
        request: Request,
        handler: Any,
        params: dict[str, Any],
        pairs: list[tuple[str, str]],
        key: str | None,
        *,
        is_browser: bool = False,
    ) -> tuple[int, dict[str, Any], bool]:
        if not is_browser and request.headers.get("authorization") != f"Bearer {self.secret_key}":
            error = StripeApiError(
                401, "Invalid API Key provided: " + request.headers.get("authorization", "")[:14]
            )
            return error.status, error.body, False
        with self._lock:
            if self._fail_next:
                status = self._fail_next.pop(0)
                error = StripeApiError(
                    status,
                    "Too many requests hit the API too quickly."
                    if status == 429
                    else "An unknown error occurred",
                    type="api_error" if status >= 500 else "invalid_request_error",
                    code="rate_limit" if status == 429 else None,
                )
                return error.status, error.body, False
            fingerprint = json.dumps([request.method, request.url.path, sorted(pairs)])
            if request.method == "POST" and key is not None and key in self._idempotent:
                stored = self._idempotent[key]
                if stored.fingerprint != fingerprint:
                    error = StripeApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    )
                    return error.status, error.body, False
                return stored.status, copy.deepcopy(stored.body), True
            arguments: dict[str, Any] = dict(request.path_params)
            if is_browser:
                arguments["is_browser"] = True
            try:
                status, payload = 200, handler(params, **arguments)
            except StripeApiError as error:
                status, payload = error.status, error.body
            if request.method == "POST" and key is not None:
                self._idempotent[key] = _Stored(fingerprint, status, copy.deepcopy(payload))
            return status, payload, False

    async def _unrecognized(self, request: Request) -> Response:
        error = StripeApiError(
            404,
            f"Unrecognized request URL ({request.method}: {request.url.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )
        return JSONResponse(error.body, status_code=404)

    def _get(self, object_id: str, object_type: str, *, param: str) -> dict[str, Any]:
        obj = self.objects.get(object_id)
        if obj is None or obj["object"] != object_type:
            raise StripeApiError(
                404 if param == "id" else 400,
                f"No such {object_type}: '{object_id}'",
                code="resource_missing",
                param=param,
            )
        return obj

    def _balance_transaction(
        self, *, amount: int, currency: str, fee: int, type: str, source: str
    ) -> dict[str, Any]:
        transaction: dict[str, Any] = {
            "id": new_id("txn"),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": int(time.time()) + 2 * 86400,
            "created": int(time.time()),
            "currency": currency,
            "description": None,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": [
                {
                    "amount": fee,
                    "application": None,
                    "currency": currency,
                    "description": "Stripe processing fees",
                    "type": "stripe_fee",
                }
            ]
            if fee
            else [],
            "net": amount - fee,
            "reporting_category": "charge" if type == "charge" else type,
            "source": source,
            "status": "pending",
            "type": type,
        }
        self.objects[transaction["id"]] = transaction
        return transaction

    def _expanded(self, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        result = copy.deepcopy(obj)
        for path in paths:
            node: Any = result
            for part in path.split("."):
                if not isinstance(node, dict):
                    break
                value = node.get(part)
                if isinstance(value, str) and value in self.objects:
                    node[part] = copy.deepcopy(self.objects[value])
                node = node.get(part)
        return result

    # Endpoints -----------------------------------------------------------------------

    def _create_account(self, params: dict[str, Any]) -> dict[str, Any]:
        account_type = params.get("type", "standard")
        if account_type not in ("express", "custom", "standard"):
            raise StripeApiError(400, f"Invalid type: {account_type}", param="type")
        requested = params.get("capabilities", {})
        account = {
            "id": new_id("acct"),
            "object": "account",
            "business_type": None,
            "capabilities": dict.fromkeys(requested, "inactive"),
            "charges_enabled": False,
            "country": params.get("country", "US"),
            "created": int(time.time()),
            "default_currency": "usd",
            "details_submitted": False,
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "payouts_enabled": False,
            "type": account_type,
        }
        self.objects[account["id"]] = account
        return account

    def _create_account_link(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("account", "type"):
            if name not in params:
                raise StripeApiError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        account = self._get(params["account"], "account", param="account")
        created = int(time.time())
        return {
            "object": "account_link",
            "created": created,
            "expires_at": created + 300,
            "url": f"https://connect.stripe.com/setup/e/{account['id']}/{new_id('link')[5:]}",
        }

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "email": params.get("email"),
            "invoice_settings": {"default_payment_method": None},
            "livemode": False,
            "metadata": params.get("metadata", {}),
        }
        self.objects[customer["id"]] = customer
        return customer

    def _card(self, payment_method: str) -> tuple[Card, dict[str, Any] | None]:
        """The behaviour of a magic test id, or of a payment method created from one."""
        if payment_method in TEST_CARDS:
            return TEST_CARDS[payment_method], None
        stored = self._get(payment_method, "payment_method", param="payment_method")
        return TEST_CARDS[stored["metadata_test_card"]], stored

    def _create_payment_method(
        self, params: dict[str, Any], *, is_browser: bool = False
    ) -> dict[str, Any]:
        """What Stripe.js's ``createPaymentMethod`` posts: ``type=card`` and the typed
        ``card[number]``; a PaymentMethod that behaves as the number's test card."""
        if params.get("type") != "card":
            raise StripeApiError(
                400, "Missing required param: type.", code="parameter_missing", param="type"
            )
        number = re.sub(r"\s", "", str(params.get("card", {}).get("number", "")))
        magic_id = TEST_CARD_NUMBERS.get(number)
        if magic_id is None:
            raise StripeApiError(
                402,
                "Your card was declined. Your request was in test mode, but used a non test "
                "card. For a list of valid test cards, visit: https://stripe.com/docs/testing.",
                type="card_error",
                code="card_declined",
                decline_code="test_mode_live_card",
                param="",
            )
        return self._public(self.objects[self._payment_method_for(magic_id)])

    async def _authenticate_endpoint(self, request: Request) -> Response:
        """The test control behind the Stripe.js double's ``handleNextAction``: the
        buyer completes (``outcome=complete``) or fails 3-D Secure on a PaymentIntent
        whose ``client_secret`` the page was given. Not part of Stripe's API."""
        params = parse_form(parse_qsl((await request.body()).decode()))
        intent = self.objects.get(request.path_params["id"])
        if intent is None or intent.get("client_secret") != params.get("client_secret"):
            error = StripeApiError(404, "No such payment_intent", code="resource_missing")
            return JSONResponse(error.body, status_code=404)
        if intent["status"] != "requires_action":
            error = StripeApiError(
                400,
                f"This PaymentIntent is {intent['status']}; it needs no action.",
                code="payment_intent_unexpected_state",
            )
            return JSONResponse(error.body, status_code=400)
        self.authenticate(intent["id"], is_successful=params.get("outcome") == "complete")
        with self._lock:
            return JSONResponse(copy.deepcopy(intent))

    def _attach_payment_method(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        if "customer" not in params:
            raise StripeApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        customer = self._get(params["customer"], "customer", param="customer")
        card, stored = self._card(id)
        if stored is not None and stored.get("metadata_detached"):
            raise StripeApiError(
                400,
                "This PaymentMethod was previously used without being attached to a Customer "
                "or was detached from a Customer, and may not be used again.",
                param="payment_method",
            )
        if stored is not None and stored["customer"] not in (None, customer["id"]):
            raise StripeApiError(
                400,
                "The payment method you provided has already been attached to a customer.",
                param="payment_method",
            )
        if card.is_declined_on_attach:
            assert card.decline is not None
            code, decline_code, message = card.decline
            raise StripeApiError(
                402, message, type="card_error", code=code, decline_code=decline_code, param=""
            )
        method = stored or {
            "id": new_id("pm"),
            "object": "payment_method",
            "billing_details": {"email": None, "name": None},
            "card": {"brand": card.brand, "exp_month": 12, "exp_year": 2034, "last4": card.last4},
            "created": int(time.time()),
            "livemode": False,
            "metadata": {},
            "type": "card",
            "metadata_test_card": id,
        }
        method["customer"] = customer["id"]
        self.objects[method["id"]] = method
        return self._public(method)

    def _detach_payment_method(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        method = self._get(id, "payment_method", param="payment_method")
        if method["customer"] is None:
            raise StripeApiError(
                400,
                "The payment method you provided is not attached to a customer so detachment "
                "is impossible.",
                param="payment_method",
            )
        method["customer"] = None
        method["metadata_detached"] = True
        return self._public(method)

    @staticmethod
    def _public(method: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value
            for key, value in method.items()
            if key not in ("metadata_test_card", "metadata_detached", "metadata_set_up")
        }

    def _create_payment_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        amount = _integer(params, "amount")
        assert amount is not None
        if amount < 1:
            raise StripeApiError(
                400, "This value must be greater than or equal to 1.", param="amount"
            )
        currency = params.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeApiError(
                400, "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        is_confirmed = _boolean(params, "confirm")
        off_session = _boolean(params, "off_session")
        if off_session and not is_confirmed:
            raise StripeApiError(
                400, "off_session can only be used with confirm=true.", param="off_session"
            )
        customer_id = params.get("customer")
        if customer_id is not None:
            self._get(customer_id, "customer", param="customer")
        transfer = params.get("transfer_data", {})
        destination = transfer.get("destination")
        application_fee = _integer(params, "application_fee_amount", required=False)
        if destination is not None:
            account = self.objects.get(destination)
            if account is None or account["object"] != "account":
                raise StripeApiError(
                    400,
                    f"No such destination: '{destination}'",
                    code="resource_missing",
                    param="transfer_data[destination]",
                )
            if account["capabilities"].get("transfers") != "active":
                raise StripeApiError(
                    400,
                    "Your destination account needs to have at least one of the following "
                    "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                    code="insufficient_capabilities_for_transfer",
                    param="transfer_data[destination]",
                )
        if application_fee is not None and destination is None:
            raise StripeApiError(
                400,
                "Can only apply an application_fee_amount when the PaymentIntent is attempting "
                "a direct payment (using an OAuth key or Stripe-Account header) or destination "
                "payment (using `transfer_data[destination]`).",
                param="application_fee_amount",
            )
        if application_fee is not None and not 0 <= application_fee <= amount:
            raise StripeApiError(
                400,
                "The application fee must be between 0 and the amount.",
                param="application_fee_amount",
            )
        payment_method = params.get("payment_method")
        if is_confirmed and payment_method is None:
            raise StripeApiError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        card, stored = (None, None) if payment_method is None else self._card(payment_method)
        if stored is not None and stored.get("metadata_detached"):
            raise StripeApiError(
                400,
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again. To use "
                "a PaymentMethod multiple times, you must attach it to a Customer first.",
                param="payment_method",
            )
        if stored is not None and stored["customer"] not in (None, customer_id):
            raise StripeApiError(
                400,
                "The provided PaymentMethod belongs to a Customer, but you did not provide "
                "that Customer's id. Supply the Customer ID as `customer`.",
                param="payment_method",
            )
        intent: dict[str, Any] = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "application_fee_amount": application_fee,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": customer_id,
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None if stored is None else stored["id"],
            "payment_method_types": params.get("allowed_payment_method_types", ["card"]),
            "status": "requires_payment_method",
            "transfer_data": None if destination is None else {"destination": destination},
            "transfer_group": params.get("transfer_group"),
        }
        intent["client_secret"] = f"{intent['id']}_secret_{new_id('s')[2:]}"
        if stored is None and payment_method is not None:
            intent["payment_method"] = self._payment_method_for(payment_method)
        self.objects[intent["id"]] = intent
        if not is_confirmed or card is None:
            return self._expanded(intent, params.get("expand", []))
        needs_authentication = card.needs_authentication and not (
            card.is_authenticated_once_set_up
            and stored is not None
            and stored.get("metadata_set_up", False)
        )
        if needs_authentication and off_session:
            self._fail_charge(
                intent,
                code="authentication_required",
                decline_code="authentication_required",
                message="Your card was declined. This transaction requires authentication.",
            )
        if needs_authentication:
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "source": new_id("src")},
            }
            return self._expanded(intent, params.get("expand", []))
        if card.decline is not None:
            code, decline_code, message = card.decline
            self._fail_charge(intent, code=code, decline_code=decline_code, message=message)
        self._succeed(intent)
        return self._expanded(intent, params.get("expand", []))

    def _payment_method_for(self, magic_id: str) -> str:
        card = TEST_CARDS[magic_id]
        method: dict[str, Any] = {
            "id": new_id("pm"),
            "object": "payment_method",
            "card": {"brand": card.brand, "exp_month": 12, "exp_year": 2034, "last4": card.last4},
            "created": int(time.time()),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
            "metadata_test_card": magic_id,
        }
        self.objects[method["id"]] = method
        return str(method["id"])

    def _charge(self, intent: dict[str, Any], *, status: str) -> dict[str, Any]:
        charge = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if status == "succeeded" else 0,
            "amount_refunded": 0,
            "application_fee_amount": intent["application_fee_amount"],
            "balance_transaction": None,
            "created": int(time.time()),
            "currency": intent["currency"],
            "customer": intent["customer"],
            "disputed": False,
            "failure_code": None,
            "paid": status == "succeeded",
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "refunded": False,
            "status": status,
            "transfer_data": intent["transfer_data"],
            "transfer_group": intent["transfer_group"],
        }
        self.objects[charge["id"]] = charge
        intent["latest_charge"] = charge["id"]
        return charge

    def _fail_charge(
        self, intent: dict[str, Any], *, code: str, decline_code: str | None, message: str
    ) -> None:
        charge = self._charge(intent, status="failed")
        charge["failure_code"] = code
        error = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "charge": charge["id"],
        }
        intent["last_payment_error"] = error
        intent["status"] = "requires_payment_method"
        raise StripeApiError(
            402,
            message,
            type="card_error",
            code=code,
            decline_code=decline_code,
            param="",
            charge=charge["id"],
            payment_intent=copy.deepcopy(intent),
            payment_method=self._public(self.objects[intent["payment_method"]]),
        )

    def _succeed(self, intent: dict[str, Any]) -> None:
        charge = self._charge(intent, status="succeeded")
        transaction = self._balance_transaction(
            amount=intent["amount"],
            currency=intent["currency"],
            fee=_stripe_fee(intent["amount"]),
            type="charge",
            source=charge["id"],
        )
        charge["balance_transaction"] = transaction["id"]
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        destination = (intent["transfer_data"] or {}).get("destination")
        if destination is not None:
            # A destination charge transfers the whole amount; the application fee comes
            # back from the connected account to the platform.
            fee = intent["application_fee_amount"] or 0
            self.connected_balances[destination] = (
                self.connected_balance(destination) + intent["amount"] - fee
            )

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        intent_id = params.get("payment_intent")
        if intent_id is None:
            raise StripeApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
                param="payment_intent",
            )
        intent = self._get(intent_id, "payment_intent", param="payment_intent")
        if intent["status"] != "succeeded":
            raise StripeApiError(
                400,
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                code="charge_not_refundable",
                param="payment_intent",
            )
        charge = self.objects[intent["latest_charge"]]
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining == 0:
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = _integer(params, "amount", required=False)
        amount = remaining if amount is None else amount
        if not 0 < amount <= remaining:
            raise StripeApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining})",
                code="amount_too_large",
                param="amount",
            )
        reverse_transfer = _boolean(params, "reverse_transfer")
        refund_fee = _boolean(params, "refund_application_fee")
        destination = (intent["transfer_data"] or {}).get("destination")
        if (reverse_transfer or refund_fee) and destination is None:
            raise StripeApiError(
                400,
                "reverse_transfer and refund_application_fee are only for Connect charges.",
                param="reverse_transfer" if reverse_transfer else "refund_application_fee",
            )
        before = charge["amount_refunded"]
        charge["amount_refunded"] = before + amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        transfer_reversal = None
        if destination is not None:
            fee = intent["application_fee_amount"] or 0
            gross = charge["amount"]
            reversed_amount = amount if reverse_transfer else 0
            # The application fee is refunded in proportion to the refund, computed on the
            # running total so partial refunds add up to the whole fee.
            fee_refund = (
                fee * charge["amount_refunded"] // gross - fee * before // gross
                if refund_fee
                else 0
            )
            self.connected_balances[destination] = (
                self.connected_balance(destination) - reversed_amount + fee_refund
            )
            if reverse_transfer:
                transfer_reversal = new_id("trr")
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": self._balance_transaction(
                amount=-amount,
                currency=charge["currency"],
                fee=0,
                type="refund",
                source=charge["id"],
            )["id"],
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": params.get("metadata", {}),
            "payment_intent": intent["id"],
            "reason": params.get("reason"),
            "status": "succeeded",
            "transfer_reversal": transfer_reversal,
        }
        self.objects[refund["id"]] = refund
        return refund

    def _create_transfer(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's "Create a transfer": ``amount``, ``currency`` and ``destination`` (a
        connected account with the ``transfers`` capability) are required;
        ``transfer_group``, ``metadata`` and ``description`` are kept."""
        amount = _integer(params, "amount")
        assert amount is not None
        if amount < 1:
            raise StripeApiError(
                400, "This value must be greater than or equal to 1.", param="amount"
            )
        currency = params.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeApiError(
                400, "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        destination = params.get("destination")
        if destination is None:
            raise StripeApiError(
                400,
                "Missing required param: destination.",
                code="parameter_missing",
                param="destination",
            )
        account = self.objects.get(destination)
        if account is None or account["object"] != "account":
            raise StripeApiError(
                400,
                f"No such destination: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        if account["capabilities"].get("transfers") != "active":
            raise StripeApiError(
                400,
                "Your destination account needs to have at least one of the following "
                "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                code="insufficient_capabilities_for_transfer",
                param="destination",
            )
        transfer: dict[str, Any] = {
            "id": new_id("tr"),
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": new_id("txn"),
            "created": int(time.time()),
            "currency": currency,
            "description": params.get("description"),
            "destination": destination,
            "destination_payment": new_id("py"),
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "reversals": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": "",
            },
            "reversed": False,
            "source_transaction": params.get("source_transaction"),
            "source_type": "card",
            "transfer_group": params.get("transfer_group"),
        }
        transfer["reversals"]["url"] = f"/v1/transfers/{transfer['id']}/reversals"
        self.objects[transfer["id"]] = transfer
        self.connected_balances[destination] = self.connected_balance(destination) + amount
        return transfer

    def _create_transfer_reversal(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        """Stripe's "Create a transfer reversal": all that is left of the transfer, or
        ``amount`` of it; more than is left is refused."""
        transfer = self._get(id, "transfer", param="id")
        left = transfer["amount"] - transfer["amount_reversed"]
        amount = _integer(params, "amount", required=False)
        amount = left if amount is None else amount
        if left == 0:
            raise StripeApiError(
                400,
                f"Transfer {id} has already been fully reversed.",
                code="transfer_already_reversed",
            )
        if not 0 < amount <= left:
            raise StripeApiError(
                400,
                f"Amount ({amount}) is greater than the amount left to reverse ({left}).",
                code="amount_too_large",
                param="amount",
            )
        reversal = {
            "id": new_id("trr"),
            "object": "transfer_reversal",
            "amount": amount,
            "balance_transaction": new_id("txn"),
            "created": int(time.time()),
            "currency": transfer["currency"],
            "destination_payment_refund": new_id("pyr"),
            "metadata": params.get("metadata", {}),
            "source_refund": None,
            "transfer": id,
        }
        self.objects[reversal["id"]] = reversal
        transfer["amount_reversed"] += amount
        transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
        transfer["reversals"]["data"].insert(0, reversal)
        transfer["reversals"]["total_count"] += 1
        destination = transfer["destination"]
        self.connected_balances[destination] = self.connected_balance(destination) - amount
        return reversal

    def _retrieve_payment_intent(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._expanded(self._get(id, "payment_intent", param="id"), params.get("expand", []))

    def _retrieve_dispute(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._expanded(self._get(id, "dispute", param="id"), params.get("expand", []))

    # SetupIntents --------------------------------------------------------------------

    def _create_setup_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's "Create a SetupIntent": ``customer``, ``payment_method`` (a test id or a
        PaymentMethod), ``usage`` (``off_session``, the default, or ``on_session``),
        ``payment_method_types``, ``metadata``, ``description``, and ``confirm``."""
        customer_id = params.get("customer")
        if customer_id is not None:
            self._get(customer_id, "customer", param="customer")
        usage = params.get("usage", "off_session")
        if usage not in ("off_session", "on_session"):
            raise StripeApiError(
                400,
                f"Invalid usage: must be one of off_session or on_session (got {usage}).",
                param="usage",
            )
        payment_method = params.get("payment_method")
        stored = None
        if payment_method is not None:
            _, stored = self._card(payment_method)
            self._check_reusable(stored, customer_id=customer_id)
        intent: dict[str, Any] = {
            "id": new_id("seti"),
            "object": "setup_intent",
            "application": None,
            "automatic_payment_methods": None,
            "cancellation_reason": None,
            "created": int(time.time()),
            "customer": customer_id,
            "description": params.get("description"),
            "flow_directions": None,
            "last_setup_error": None,
            "latest_attempt": None,
            "livemode": False,
            "mandate": None,
            "metadata": params.get("metadata", {}),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None
            if payment_method is None
            else (stored["id"] if stored is not None else self._payment_method_for(payment_method)),
            "payment_method_types": params.get(
                "allowed_payment_method_types", params.get("payment_method_types", ["card"])
            ),
            "single_use_mandate": None,
            "status": "requires_payment_method"
            if payment_method is None
            else "requires_confirmation",
            "usage": usage,
        }
        intent["client_secret"] = f"{intent['id']}_secret_{new_id('s')[2:]}"
        self.objects[intent["id"]] = intent
        if _boolean(params, "confirm"):
            self._confirm_setup(intent, payment_method=None)
        return copy.deepcopy(intent)

    def _check_reusable(self, stored: dict[str, Any] | None, *, customer_id: str | None) -> None:
        if stored is None:
            return
        if stored.get("metadata_detached"):
            raise StripeApiError(
                400,
                "The provided PaymentMethod was previously used without being attached to a "
                "Customer or was detached from a Customer, and may not be used again.",
                param="payment_method",
            )
        if stored["customer"] not in (None, customer_id):
            raise StripeApiError(
                400,
                "The provided PaymentMethod belongs to a Customer, but you did not provide "
                "that Customer's id. Supply the Customer ID as `customer`.",
                param="payment_method",
            )

    def _setup_intent_for(
        self, id: str, params: dict[str, Any], *, is_browser: bool
    ) -> dict[str, Any]:
        """The SetupIntent; from the browser (the publishable key) only with its
        ``client_secret``, as Stripe checks."""
        intent = self._get(id, "setup_intent", param="id")
        if is_browser and params.get("client_secret") != intent["client_secret"]:
            raise StripeApiError(
                404, f"No such setupintent: '{id}'", code="resource_missing", param="intent"
            )
        return intent

    @staticmethod
    def _as_seen(intent: dict[str, Any], *, is_browser: bool) -> dict[str, Any]:
        """A SetupIntent as the key sees it: with the publishable key, Stripe leaves out
        the customer, the metadata and the description."""
        seen = copy.deepcopy(intent)
        if is_browser:
            for private in ("customer", "metadata", "description", "on_behalf_of", "mandate"):
                seen.pop(private, None)
        return seen

    def _retrieve_setup_intent(
        self, params: dict[str, Any], id: str, *, is_browser: bool = False
    ) -> dict[str, Any]:
        intent = self._setup_intent_for(id, params, is_browser=is_browser)
        return self._as_seen(
            self._expanded(intent, params.get("expand", [])), is_browser=is_browser
        )

    def _confirm_setup_intent(
        self, params: dict[str, Any], id: str, *, is_browser: bool = False
    ) -> dict[str, Any]:
        """Stripe's "Confirm a SetupIntent", as Stripe.js sends it (the publishable key and
        the ``client_secret``) or the server does: optionally a ``payment_method``."""
        intent = self._setup_intent_for(id, params, is_browser=is_browser)
        if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeApiError(
                400,
                f"You cannot confirm this SetupIntent because it has a status of "
                f"{intent['status']}.",
                code="setup_intent_unexpected_state",
                setup_intent=self._as_seen(intent, is_browser=is_browser),
            )
        try:
            self._confirm_setup(intent, payment_method=params.get("payment_method"))
        except StripeApiError as error:
            # The error carries the SetupIntent as this key may see it.
            error.body["error"]["setup_intent"] = self._as_seen(intent, is_browser=is_browser)
            raise
        return self._as_seen(intent, is_browser=is_browser)

    def _confirm_setup(self, intent: dict[str, Any], *, payment_method: str | None) -> None:
        """Confirm: a card that needs 3-D Secure waits in ``requires_action``; a card
        declined when saved fails (a 402 ``card_error``, ``last_setup_error`` set, back to
        ``requires_payment_method``); any other succeeds and is attached to the customer."""
        if payment_method is not None:
            _, stored = self._card(payment_method)
            self._check_reusable(stored, customer_id=intent["customer"])
            intent["payment_method"] = (
                stored["id"] if stored is not None else self._payment_method_for(payment_method)
            )
        if intent["payment_method"] is None:
            raise StripeApiError(
                400,
                "You cannot confirm this SetupIntent because it's missing a payment method. "
                "Update the SetupIntent with a payment method and then confirm it again.",
                code="setup_intent_unexpected_state",
                param="payment_method",
            )
        card, _ = self._card(intent["payment_method"])
        intent["last_setup_error"] = None
        attempt = {
            "id": new_id("setatt"),
            "object": "setup_attempt",
            "created": int(time.time()),
            "payment_method": intent["payment_method"],
            "setup_intent": intent["id"],
            "status": "requires_confirmation",
            "usage": intent["usage"],
        }
        self.objects[attempt["id"]] = attempt
        intent["latest_attempt"] = attempt["id"]
        if card.is_declined_on_attach:
            assert card.decline is not None
            code, decline_code, message = card.decline
            attempt["status"] = "failed"
            intent["status"] = "requires_payment_method"
            intent["last_setup_error"] = {
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
                "payment_method": self._public(self.objects[intent["payment_method"]]),
            }
            intent["payment_method"] = None
            raise StripeApiError(
                402, message, type="card_error", code=code, decline_code=decline_code, param=""
            )
        if card.needs_authentication:
            attempt["status"] = "requires_action"
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "source": new_id("src")},
            }
            return
        self._finish_setup(intent)

    def _finish_setup(self, intent: dict[str, Any]) -> None:
        intent["status"] = "succeeded"
        intent["next_action"] = None
        self.objects[intent["latest_attempt"]]["status"] = "succeeded"
        method = self.objects[intent["payment_method"]]
        if intent["usage"] == "off_session":
            method["metadata_set_up"] = True
        if intent["customer"] is not None:
            method["customer"] = intent["customer"]

    def authenticate_setup(self, intent_id: str, *, is_successful: bool = True) -> None:
        """The buyer finishes (or fails) 3-D Secure for a ``requires_action`` SetupIntent:
        it succeeds (the card is attached to the customer), or goes back to
        ``requires_payment_method`` with ``setup_intent_authentication_failure``, as
        Stripe reports it."""
        with self._lock:
            intent = self.objects[intent_id]
            assert intent["status"] == "requires_action", intent["status"]
            if is_successful:
                self._finish_setup(intent)
                return
            intent["next_action"] = None
            intent["status"] = "requires_payment_method"
            self.objects[intent["latest_attempt"]]["status"] = "failed"
            intent["last_setup_error"] = {
                "type": "invalid_request_error",
                "code": "setup_intent_authentication_failure",
                "message": "The latest attempt to set up the payment method has failed "
                "because authentication failed.",
                "payment_method": self._public(self.objects[intent["payment_method"]]),
            }
            intent["payment_method"] = None

    async def _authenticate_setup_endpoint(self, request: Request) -> Response:
        """The test control behind the Stripe.js double's ``confirmCardSetup``: the buyer
        completes (``outcome=complete``) or fails 3-D Secure on a SetupIntent whose
        ``client_secret`` the page was given. Not part of Stripe's API."""
        params = parse_form(parse_qsl((await request.body()).decode()))
        intent = self.objects.get(request.path_params["id"])
        if intent is None or intent.get("client_secret") != params.get("client_secret"):
            error = StripeApiError(404, "No such setupintent", code="resource_missing")
            return JSONResponse(error.body, status_code=404)
        if intent["status"] != "requires_action":
            error = StripeApiError(
                400,
                f"This SetupIntent is {intent['status']}; it needs no action.",
                code="setup_intent_unexpected_state",
            )
            return JSONResponse(error.body, status_code=400)
        self.authenticate_setup(intent["id"], is_successful=params.get("outcome") == "complete")
        with self._lock:
            return JSONResponse(self._as_seen(intent, is_browser=True))


@contextlib.contextmanager
def serve(double: StripeDouble) -> Iterator[str]:
    """Run the double with uvicorn on 127.0.0.1 in a background thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            double.app,
            log_level="warning",
            lifespan="off",
            ws="none",
            http="h11",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Stripe double did not start")
            time.sleep(0.01)
        double.base_url = f"http://127.0.0.1:{port}"
        yield double.base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
