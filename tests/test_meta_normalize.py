"""Meta's written normalization rules, field by field, and Meta's published hash examples."""

import hashlib
import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from tagserver.toolkit import identity as normalize
from tagserver.toolkit.identity import hash_value


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Meta's own examples (Conversions API docs): input → the hash Meta expects
META_EXAMPLES = [
    ("em", "John_Smith@gmail.com", None, "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"),
    ("ph", "+1 (650) 555-1212", None, "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("fn", "Mary", None, "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("fn", "Valéry", None, "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("db", "2/16/1997", None, "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"),
    ("country", "United States", None, "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "raw", "context", "expected"), META_EXAMPLES)
def test_meta_published_hash_examples(key, raw, context, expected):
    assert hash_value(key, raw, context) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("John_Smith@gmail.com", "john_smith@gmail.com"),
        ("  Person@Example.COM\t", "person@example.com"),
        ("a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk"),
        ("not an email", None),
        ("missing-at.example.com", None),
        ("two@@example.com", None),
        ("nodot@localhost", None),
        ("", None),
        ("   ", None),
    ],
)
def test_email(raw, expected):
    assert normalize.email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (650) 555-1212", None, "16505551212"),
        ("+1 650.555.1212", None, "16505551212"),
        ("(650)555-1212", "us", "16505551212"),
        ("650-555-1212", "US", "16505551212"),
        ("1 650 555 1212", "us", "16505551212"),  # national number with the NANP trunk 1
        ("16505551212", None, "16505551212"),  # country code without +: valid read as such
        ("6505551212", None, None),  # no country code, no region: cannot be completed
        ("+44 (0)20 7946 0958", None, "442079460958"),  # (0) trunk marker dropped
        ("+44 020 7946 0958", None, "442079460958"),  # trunk written without parentheses
        ("020 7946 0958", "gb", "442079460958"),  # national with trunk 0
        ("07911 123456", "gb", "447911123456"),
        ("0044 20 7946 0958", None, "442079460958"),  # 00 international prefix
        ("447911123456", "gb", "447911123456"),  # country code already there
        ("+49 (0)30 901820", None, "4930901820"),
        ("030 901820", "de", "4930901820"),
        ("+33 1 42 68 53 00", None, "33142685300"),
        ("01 42 68 53 00", "fr", "33142685300"),
        ("+39 06 6982 1234", None, "390669821234"),  # Italy keeps its leading 0
        ("+1 650 555 1212 ext. 3", None, "16505551212"),
        ("tel: +1-650-555-1212", None, "16505551212"),
        ("abc", "us", None),
        ("123", "us", None),
        ("", "us", None),
    ],
)
def test_phone(raw, region, expected):
    assert normalize.phone(raw, region) == expected


def test_phone_number_typed_as_a_number():
    assert hash_value("ph", 16505551212) == sha("16505551212")


def _libphonenumber(text, region):
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)[1:]


def test_phone_fast_path_agrees_with_libphonenumber_for_every_region():
    """The fast path must give libphonenumber's answer: every region, every number type,
    written internationally, in E.164 and nationally."""
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            for fmt, hint in (
                (PhoneNumberFormat.INTERNATIONAL, None),
                (PhoneNumberFormat.E164, None),
                (PhoneNumberFormat.NATIONAL, region),
            ):
                text = phonenumbers.format_number(number, fmt)
                assert normalize.phone(text, hint) == _libphonenumber(text, hint), (region, text)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Mary", "mary"),
        ("Valéry", "valéry"),
        ("Vale\u0301ry", "valéry"),  # decomposed accent: NFC first
        ("  MARY  ", "mary"),
        ("Mary-Ann", "maryann"),
        ("O'Brien", "obrien"),
        ("Jean  Paul", "jean paul"),
        ("José.", "josé"),
        ("Zoë!", "zoë"),
        ("सचिन", "सचिन"),  # combining vowel signs are kept
        ("Müller-Lüdenscheidt", "müllerlüdenscheidt"),
        ("...", None),
        ("", None),
    ],
)
def test_names(raw, expected):
    assert normalize.name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Female", "f"), ("f", "f"), ("F", "f"), ("woman", "f"), ("Male", "m"), ("M", "m"),
     ("other", None), ("", None)],
)  # fmt: skip
def test_gender(raw, expected):
    assert normalize.gender(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2/16/1997", "19970216"),
        ("02/16/1997", "19970216"),
        ("1997-02-16", "19970216"),
        ("1997/2/16", "19970216"),
        ("19970216", "19970216"),
        ("1997-02-16T00:00:00Z", "19970216"),
        ("16.02.1997", "19970216"),  # dots: day first
        ("16/02/1997", "19970216"),  # first number over 12: day first
        ("16 Feb 1997", "19970216"),
        ("February 16, 1997", "19970216"),
        ("Feb 16th 1997", "19970216"),
        ("2/30/1997", None),
        ("13/13/1997", None),
        ("1850-01-01", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_date_of_birth(raw, expected):
    assert normalize.date_of_birth(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("San Francisco", "sanfrancisco"),
        ("St. Louis", "stlouis"),
        ("Winston-Salem", "winstonsalem"),
        ("Zürich 8001", "zürich"),
        ("São Paulo", "sãopaulo"),
        ("London", "london"),
        ("123", None),
    ],
)
def test_city(raw, expected):
    assert normalize.city(raw) == expected


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("California", None, "ca"),
        ("california", "us", "ca"),
        ("CA", "us", "ca"),
        ("New York", "us", "ny"),
        ("District of Columbia", "us", "dc"),
        ("Ontario", "ca", "ontario"),
        ("ON", "ca", "on"),
        ("Île-de-France", "fr", "îledefrance"),
        ("Greater London", "gb", "greaterlondon"),
        ("", "us", None),
    ],
)
def test_state(raw, country, expected):
    assert normalize.state(raw, country) == expected


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("94025", "us", "94025"),
        ("94025-1234", "us", "94025"),  # ZIP+4
        ("94025 1234", None, "94025"),
        ("940251234", "us", "94025"),
        (2134, "us", "02134"),  # a ZIP that went through a number lost its zero
        ("SW1A 1AA", "gb", "sw1a1aa"),  # UK postcode: lowercase, no spaces
        ("sw1a 1aa", None, "sw1a1aa"),
        ("EC1A 1BB", "gb", "ec1a1bb"),
        ("M5V 3L9", "ca", "m5v3l9"),
        ("75008", "fr", "75008"),
        ("100-0001", "jp", "100"),  # Meta's rule: only the part before the dash
        ("x", "gb", None),
        ("", "us", None),
    ],
)
def test_postal_code(raw, country, expected):
    assert normalize.postal_code(raw, country) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("US", "us"),
        ("us", "us"),
        ("USA", "us"),
        ("U.S.A.", "us"),
        ("United States", "us"),
        ("United States of America", "us"),
        ("UK", "gb"),
        ("United Kingdom", "gb"),
        ("GB", "gb"),
        ("Great Britain", "gb"),
        ("Germany", "de"),
        ("Deutschland", "de"),
        ("DEU", "de"),
        ("Türkiye", "tr"),
        ("Turkey", "tr"),
        ("Korea, Republic of", "kr"),
        ("Côte d'Ivoire", "ci"),
        ("Narnia", None),
        ("", None),
    ],
)
def test_country(raw, expected):
    assert normalize.country(raw) == expected


def test_already_hashed_values_pass_through_lowercased():
    digest = sha("someone@example.com")
    for key in ("em", "ph", "fn", "ln", "ct", "st", "zp", "country", "db", "ge", "external_id"):
        assert hash_value(key, digest.upper()) == digest
        assert hash_value(key, f"  {digest} ") == digest


def test_32_hex_is_not_treated_as_hashed():
    md5_like = "d41d8cd98f00b204e9800998ecf8427e"
    assert hash_value("external_id", md5_like) == sha(md5_like)
    assert hash_value("em", md5_like) is None  # and it is not an email either


@pytest.mark.parametrize("blank", [None, "", "   ", "\t\n", [], {}, True, 3.5])
def test_blanks_and_wrong_types_are_dropped_never_hashed(blank):
    for key in normalize.HASHED_KEYS:
        assert hash_value(key, blank) is None


def test_the_hash_of_an_empty_string_is_never_produced():
    empty = sha("")
    for key in normalize.HASHED_KEYS:
        for raw in ("", " ", "...", "-", "()"):
            assert hash_value(key, raw, "us") != empty


def test_external_id_keeps_its_case():
    assert hash_value("external_id", " Cust-42 ") == sha("Cust-42")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("usd", "USD"),
        ("EUR", "EUR"),
        (" gbp ", "GBP"),
        ("XYZ", None),
        ("dollars", None),
        ("", None),
    ],
)
def test_currency(raw, expected):
    assert normalize.currency(raw) == expected


def test_only_low_cardinality_fields_are_remembered_and_the_memory_is_bounded():
    for key, raw in (("em", "memo.check@example.com"), ("ph", "+1 650 555 0199"),
                     ("fn", "Memocheck"), ("db", "19700101"), ("zp", "SW1A 2AA"),
                     ("external_id", "memo-id-1")):  # fmt: skip
        hash_value(key, raw, "gb")
        assert not any(raw in k for k in normalize._MEMO), key
    assert hash_value("country", "Memoland Republic") is None
    assert hash_value("ct", "Springfield") == sha("springfield")
    assert ("ct", "Springfield", None) in normalize._MEMO
    for i in range(normalize._MEMO_MAX + 10):
        hash_value("ct", f"Town {i}")
    assert len(normalize._MEMO) <= normalize._MEMO_MAX


def test_phone_fast_path_agrees_with_libphonenumber_on_random_international_numbers():
    """Numbers written with their country code, random digits after it (trunk prefixes,
    carrier codes, impossible lengths included): the fast path answers as libphonenumber."""
    rng = random.Random(14)
    codes = sorted(
        str(cc) for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
        if regions[0] != "001"
    )  # fmt: skip
    for _ in range(20_000):
        cc = rng.choice(codes)
        national = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 13)))
        if rng.random() < 0.3:  # a trunk prefix or a national prefix for parsing written first
            national = rng.choice(("0", "00", "1", "8", "180020", "9", "15")) + national
        for text in (f"+{cc}{national}", f"+{cc} {national[:3]} {national[3:]}"):
            assert normalize.phone(text) == _libphonenumber(text, None), text
