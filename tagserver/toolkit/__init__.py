"""The plugin toolkit: helpers a client or a tag may use, beside the API in `tagserver`.

Each submodule re-exports exactly what plugins may rely on; the engine modules behind them
may move. Import the submodule and use its names:

    from tagserver.toolkit import cookies, cors, events, http, metrics, redact
    from tagserver.toolkit import identity, conversions, match

- `cookies`  first-party visitor cookies (`_fbp`, `_fbc`, client id) with the shared rules
- `cors`     credentialed CORS grants and preflights for browser hits
- `events`   event helpers: checking an event given as JSON (`check_event`), consent types,
             page parts, preview-token stripping, value text
- `http`     how a sender reads a vendor's HTTP answer: delivered, retry or permanent
- `metrics`  cheap counting on the hit path (`count`, `observe`, `labelled`)
- `redact`   remove a token from text before it is shown anywhere
- `identity` customer data normalized and SHA-256 hashed (email, phone, names, address, ids),
             one set of rules for every conversions tag; hashes pass through
- `conversions` what a conversions-API tag needs: `ConversionsTag`, refusals, match quality,
             user data hashed once per event for every tag (`Hashes`), GA4 items read once,
             click ids and the event's common parts, isolating refused events in a batch
- `match`    keys an event lacks, from the visitor's encrypted identity cookie and from
             geography (`enrich`), the report of what each event gained (`report`), and
             keeping what a visitor gave (`remember_identity`, for browser clients)
"""

from __future__ import annotations

__all__ = [
    "conversions", "cookies", "cors", "events", "http", "identity", "match", "metrics", "redact",
]  # fmt: skip
