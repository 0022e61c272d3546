"""Delivery: the durable outbox and the dispatcher that empties it into vendors' APIs."""
