"""The `meta_capi` tag gives the very same answers as the reference version, on 3,000 generated
events: stored payloads byte for byte, refusals and their reasons, notes, match reports, dry
runs and the mapping alone (see `meta_cases.py`).

The fixture holds a fingerprint of each case's outcome, made by the reference tree's tag (the
`main` of 2026-12-06, before the mapping was made faster). A change that alters what Meta
receives for any of these inputs fails here; one that does so on purpose regenerates it:

    python tests/meta_cases.py > tests/fixtures/meta/payloads.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import meta_cases

FIXTURE = Path(__file__).parent / "fixtures" / "meta" / "payloads.json"


def test_generated_events_give_the_reference_payloads():
    expected = json.loads(FIXTURE.read_text())
    assert (expected["seed"], expected["count"]) == (meta_cases.SEED, meta_cases.COUNT)
    now = int(time.time())
    differ = []
    for index, case in enumerate(meta_cases.cases(now)):
        outcome = meta_cases.outcome(*case)
        if meta_cases.digest(outcome, now) != expected["digests"][index]:
            differ.append((index, case[0], case[1], outcome))
    assert not differ, (
        f"{len(differ)} of {meta_cases.COUNT} cases differ from the reference; the first: "
        f"case {differ[0][0]}, event {differ[0][1]!r}, params {differ[0][2]!r}, "
        f"outcome now {differ[0][3]!r}"
    )


def test_the_cases_cover_what_they_claim():
    """The generator reaches the shapes the comparison is for (a guard against a generator
    that drifts into refusing everything)."""
    now = int(time.time())
    outcomes = [meta_cases.outcome(*case) for case in meta_cases.cases(now, count=600)]
    sent = [o for o in outcomes if o["live"][0] and o["live"][0][0] != "refused"]
    assert len(sent) > 100
    payloads = "".join(o["build"][0] for o in outcomes)
    for key in ('"em"', '"ph"', '"fn"', '"ln"', '"ge"', '"db"', '"ct"', '"st"', '"zp"',
                '"country"', '"external_id"', '"fbc"', '"fbp"', '"client_ip_address"',
                '"contents"', '"data_processing_options"', '"search_string"'):  # fmt: skip
        assert key in payloads, key
    dropped = {key for o in outcomes for key in o["build"][1]}
    assert {"em", "ph", "db", "country", "client_ip_address", "fbc", "fbp"} <= dropped
