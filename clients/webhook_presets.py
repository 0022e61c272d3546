"""Ready mappings for systems that call webhooks in their own format.

A preset is the `signature` scheme and the `mapping` a marketer would otherwise write by hand;
the client's own `mapping` param is merged over it, key by key, so one field can be changed
without copying the rest.
"""

from __future__ import annotations

from typing import Any

SHOPIFY_ORDERS: dict[str, Any] = {
    "signature": "shopify",
    "event_name": "purchase",
    "mapping": {
        # one event per order, whatever topic re-sends it (orders/create, orders/paid):
        # the same id gives the same event id, so the outbox stores it once
        "event_id": {"path": "id", "prefix": "shopify-order-"},
        "transaction_id": {"first": ["name", "order_number", "id"]},
        "event_time": {"first": ["processed_at", "created_at"]},
        "value": {"first": ["current_total_price", "total_price"]},
        "currency": {"first": ["currency", "presentment_currency"]},
        "action_source": {"const": "website"},
        "page_location": {"path": "order_status_url"},
        "ip_override": {"first": ["browser_ip", "client_details.browser_ip"]},
        "user_agent": {"path": "client_details.user_agent"},
        "user_data.email_address": {"first": ["email", "contact_email", "customer.email"]},
        "user_data.phone_number": {
            "first": ["phone", "customer.phone", "billing_address.phone", "shipping_address.phone"]
        },
        "user_data.external_id": {"path": "customer.id", "prefix": "shopify-customer-"},
        "user_data.address.first_name": {
            "first": ["billing_address.first_name", "customer.first_name"]
        },
        "user_data.address.last_name": {
            "first": ["billing_address.last_name", "customer.last_name"]
        },
        "user_data.address.street": {"path": "billing_address.address1"},
        "user_data.address.city": {"path": "billing_address.city"},
        "user_data.address.region": {"path": "billing_address.province_code"},
        "user_data.address.postal_code": {"path": "billing_address.zip"},
        "user_data.address.country": {"path": "billing_address.country_code"},
        # a checkout that captured the browser's Meta cookies into note attributes
        "x-fb-ck-fbp": {"find": "note_attributes", "where": {"name": "_fbp"}, "take": "value"},
        "x-fb-ck-fbc": {"find": "note_attributes", "where": {"name": "_fbc"}, "take": "value"},
        "items": {
            "each": "line_items",
            "map": {
                "item_id": {"first": ["sku", "variant_id", "product_id"]},
                "item_name": {"first": ["title", "name"]},
                "item_brand": "vendor",
                "price": "price",
                "quantity": "quantity",
            },
        },
    },
}

PRESETS: dict[str, dict[str, Any]] = {"shopify_orders": SHOPIFY_ORDERS}
