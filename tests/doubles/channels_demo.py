"""Local Shopify and Etsy doubles for the demo (``make run`` starts them): a Shopify shop
and an Etsy shop that sell Kiln & Clay's mugs and bowls too, so a newcomer sees stock
move across channels.

    python -m tests.doubles.channels_demo --shopify-port 8101 --etsy-port 8102

Sell on them as a buyer there would (the demo's channel page shows the result within
seconds)::

    curl -X POST http://127.0.0.1:8101/_double/sell -H 'content-type: application/json' \\
         -d '{"sku": "KC-MOON-MUG", "quantity": 1}'
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from tests.doubles.etsy import EtsyDouble, serve_etsy
from tests.doubles.shopify import ShopifyDouble, serve_shopify

# The app credentials the demo's settings name (Makefile: STALLHOLDER_ETSY_KEYSTRING …).
SHOPIFY_TOKEN = "shpat_demo_kiln_and_clay"
SHOPIFY_SECRET = "shpss_demo_kiln_and_clay"
ETSY_KEYSTRING = "demo-keystring"
ETSY_SECRET = "demo-shared-secret"
ETSY_SHOP_ID = 5550001
ETSY_TOKEN = "777001.demo-etsy-token"


def shops() -> tuple[ShopifyDouble, EtsyDouble]:
    shopify = ShopifyDouble(client_secret=SHOPIFY_SECRET, access_token=SHOPIFY_TOKEN)
    shopify.add_product("Speckled moon mug", [("KC-MOON-MUG", 20)], price=5200)
    shopify.add_product("Ash-glaze bowl (second)", [("KC-SECOND-BOWL", 1)], price=2400)
    shopify.add_product("Gift card", [("KC-GIFT-CARD", 0)], price=2500)
    etsy = EtsyDouble(
        keystring=ETSY_KEYSTRING,
        shared_secret=ETSY_SECRET,
        shop_id=ETSY_SHOP_ID,
        access_token=ETSY_TOKEN,
    )
    etsy.add_product("Speckled moon mug, handmade stoneware", [("KC-MOON-MUG", 20)], price=5400)
    etsy.add_product("Ash-glaze bowl, studio second", [("KC-SECOND-BOWL", 1)], price=2600)
    return shopify, etsy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shopify-port", type=int, default=8101)
    parser.add_argument("--etsy-port", type=int, default=8102)
    args = parser.parse_args()
    shopify, etsy = shops()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        shopify_url = stack.enter_context(serve_shopify(shopify, port=args.shopify_port))
        etsy_url = stack.enter_context(serve_etsy(etsy, port=args.etsy_port))
        print(f"Shopify double on {shopify_url}, Etsy double on {etsy_url}", flush=True)
        stop.wait()
        shopify.close()
        etsy.close()


if __name__ == "__main__":
    main()
