"""The gateway the settings choose (``STALLHOLDER_PAYMENT_GATEWAY=sandbox|stripe``)."""

from __future__ import annotations

from stallholder.kit.db import Database
from stallholder.payments.gateway import Gateway, SandboxGateway
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.settings import Settings


class GatewayMisconfigured(ValueError):
    """The settings name a gateway without what it needs: the app refuses to start."""


def check_gateway_settings(settings: Settings) -> None:
    """Raises GatewayMisconfigured when the chosen gateway lacks what it needs."""
    if settings.payment_gateway != "stripe":
        return
    missing = [
        variable
        for variable, value in (
            ("STALLHOLDER_STRIPE_SECRET_KEY", settings.stripe_secret_key),
            ("STALLHOLDER_STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
            ("STALLHOLDER_STRIPE_PUBLISHABLE_KEY", settings.stripe_publishable_key),
        )
        if not value
    ]
    if missing:
        raise GatewayMisconfigured(
            f"STALLHOLDER_PAYMENT_GATEWAY=stripe needs {', '.join(missing)} "
            "(see docs/integrations.md, 'Switching to Stripe')"
        )


def gateway_from_settings(settings: Settings, *, database: Database | None = None) -> Gateway:
    """The configured gateway. The caller owns it and closes it with ``aclose()``.

    The sandbox keeps its charges in ``database`` when given (so a retry after a crash
    finds them, as at a real processor), else in memory.

    Raises:
        GatewayMisconfigured: Stripe is chosen without its secret key or webhook secret.
    """
    check_gateway_settings(settings)
    if settings.payment_gateway == "sandbox":
        return SandboxGateway(DatabaseChargeStore(database) if database is not None else None)
    return StripeGateway(
        secret_key=settings.stripe_secret_key,
        webhook_secret=settings.stripe_webhook_secret,
        api_base=settings.stripe_api_base or None,
        fee_bps=settings.stripe_fee_bps,
        fee_fixed=settings.stripe_fee_fixed,
    )
