"""Imports every domain's tables so ``Base.metadata`` is whole (migrations, tests)."""

from stallholder.accounts import models as accounts_models
from stallholder.billing import models as billing_models
from stallholder.catalog import models as catalog_models
from stallholder.channels import models as channels_models
from stallholder.checkout import models as checkout_models
from stallholder.digital import models as digital_models
from stallholder.events import models as events_models
from stallholder.fulfilment import models as fulfilment_models
from stallholder.inventory import models as inventory_models
from stallholder.kit import idempotency, rate_limits, work
from stallholder.kit.db import Base
from stallholder.ledger import models as ledger_models
from stallholder.notifications import models as notifications_models
from stallholder.orders import models as orders_models
from stallholder.payments import models as payments_models
from stallholder.wallets import models as wallets_models

metadata = Base.metadata

__all__ = [
    "accounts_models",
    "billing_models",
    "catalog_models",
    "channels_models",
    "checkout_models",
    "digital_models",
    "events_models",
    "fulfilment_models",
    "idempotency",
    "inventory_models",
    "ledger_models",
    "metadata",
    "notifications_models",
    "orders_models",
    "payments_models",
    "rate_limits",
    "wallets_models",
    "work",
]
