"""RudderStack normaliser: shared fixtures, SPEC section 5 rules, never-raise properties."""

from __future__ import annotations

import base64
import json
import sys
from copy import deepcopy
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.adapters.rudderstack import (
    Deduplicator,
    ParseResult,
    normalize_content_id,
    normalize_event,
    normalize_event_name,
    normalize_events,
    parse_record,
    parse_timestamp,
    payload_fingerprint,
)
from worker.recsys_core.types import InteractionEvent

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "rudderstack"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
OUTCOMES = {"interactions", "no_interaction", "identity", "rejected"}


# --------------------------------------------------------------------------- fixtures


def _lines(name: str) -> list[str]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(
            f"shared RudderStack fixtures not found: {path} (expected ../shared/rudderstack)"
        )
    return path.read_text(encoding="utf-8").splitlines()


@cache
def _valid() -> list[tuple[str, dict[str, Any]]]:
    raws = _lines("valid.jsonl")
    expected = [json.loads(line) for line in _lines("valid.expected.jsonl")]
    assert len(raws) == len(expected) == 27
    return list(zip(raws, expected, strict=True))


def _invalid_forms(line: str) -> list[tuple[str, Any]]:
    """Every form an invalid line provides: the object (as dict, str, bytes), _raw, _raw_b64."""
    obj = json.loads(line)
    obj.pop("_why")
    if "_raw" in obj:
        return [("raw_str", obj["_raw"]), ("raw_bytes", obj["_raw"].encode("utf-8"))]
    if "_raw_b64" in obj:
        return [("raw_b64", base64.b64decode(obj["_raw_b64"]))]
    text = orjson.dumps(obj).decode()
    return [("dict", obj), ("str", text), ("bytes", text.encode())]


@cache
def _invalid() -> list[str]:
    lines = _lines("invalid.jsonl")
    assert len(lines) == 27
    return lines


def _as_expected(ev: InteractionEvent) -> dict[str, Any]:
    """An InteractionEvent in the shape of valid.expected.jsonl."""
    props = dict(ev.properties)
    assert "message_id" not in props
    props["message_id"] = ev.message_id
    ts = ev.timestamp
    assert ts.tzinfo is UTC and ts.microsecond % 1000 == 0
    return {
        "user_id": ev.user_id,
        "content_id": ev.content_id,
        "event_type": ev.event_type,
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
        "weight": ev.weight,
        "properties": props,
    }


def _forms(raw: str) -> list[Any]:
    return [raw, raw.encode("utf-8"), json.loads(raw)]


# --------------------------------------------------------------------------- 1. valid fixtures


@pytest.mark.parametrize("line", range(1, 28))
@pytest.mark.parametrize("form", ["str", "bytes", "dict"])
def test_valid_line_matches_expected(line: int, form: str) -> None:
    raw, expected = _valid()[line - 1]
    value = dict(zip(["str", "bytes", "dict"], _forms(raw), strict=True))[form]
    result = parse_record(value, now=NOW)
    assert result.outcome == expected["outcome"], result
    assert result.message_id == expected["messageId"]
    if expected["outcome"] == "interactions":
        assert result.reason is None
        got = [_as_expected(ev) for ev in result.interactions]
        assert got == expected["interactions"]
        # Types matter too (1 == 1.0 == True in Python).
        for ev, exp in zip(result.interactions, expected["interactions"], strict=True):
            assert type(ev.weight) is type(exp["weight"])
            for key, value in exp["properties"].items():
                if key != "message_id":
                    assert type(ev.properties[key]) is type(value), key
    else:
        assert result.interactions == ()
        assert result.reason == expected["reason"]


def test_normalize_events_fans_out_and_sorts_by_time() -> None:
    raws = [raw for raw, _ in _valid()]
    events = normalize_events(raws, now=NOW)
    expected_count = sum(len(exp.get("interactions", [])) for _, exp in _valid())
    assert len(events) == expected_count
    stamps = [ev.timestamp for ev in events]
    assert stamps == sorted(stamps)
    # stable: fan-out items of one order keep their index order
    order = [ev.message_id for ev in events if ev.message_id.startswith("fd4f176e")]
    assert order == [f"fd4f176e-36b0-4bb2-b581-aa3cf00ae839:{i}" for i in range(3)]


def test_normalize_event_returns_first_interaction_or_none() -> None:
    raws = {exp["line"]: raw for raw, exp in _valid()}
    first = normalize_event(raws[7], now=NOW)
    assert first is not None and first.message_id.endswith(":0")
    assert normalize_event(raws[17], now=NOW) is None  # heartbeat
    assert normalize_event(b"\x00garbage", now=NOW) is None


# --------------------------------------------------------------------------- 2. invalid fixtures


@pytest.mark.parametrize("line", [n for n in range(1, 28) if n not in (23, 24)])
def test_invalid_line_is_rejected_in_every_form(line: int) -> None:
    forms = _invalid_forms(_invalid()[line - 1])
    assert forms
    for form, value in forms:
        result = parse_record(value, now=NOW)
        assert result.outcome == "rejected", (form, result)
        assert result.reason, form
        assert result.detail, form
        assert result.interactions == ()


def test_invalid_reason_codes() -> None:
    codes = {
        n: parse_record(_invalid_forms(line)[-1][1], now=NOW).reason
        for n, line in enumerate(_invalid(), 1)
    }
    assert codes == {
        1: "no_user_id",
        2: "no_user_id",
        3: "bad_user_id",
        4: "user_id_too_long",
        5: "no_type",
        6: "bad_type",
        7: "no_event",
        8: "no_content_id",
        9: "bad_content_id",
        10: "bad_content_id",
        11: "bad_content_id",
        12: "bad_content_id",
        13: "empty_products",
        14: "bad_products",
        15: "too_deep",
        16: "too_large",
        17: "implausible_timestamp",
        18: "bad_timestamp",
        19: "bad_timestamp",
        20: "bad_timestamp",
        21: "empty_identify",
        22: "alias_missing_id",
        23: None,  # valid on its own: only dedup rejects it
        24: None,
        25: "invalid_json",
        26: "invalid_json",
        27: "avro_record",
    }


@pytest.mark.parametrize("form", ["dict", "str", "bytes"])
def test_dedup_rejects_lines_23_and_24_after_valid(form: str) -> None:
    dedup = Deduplicator()
    for raw, _ in _valid():
        value = dict(zip(["str", "bytes", "dict"], _forms(raw), strict=True))[form]
        result = parse_record(value, now=NOW, fingerprint=True)
        assert result.fingerprint == payload_fingerprint(json.loads(raw))
        assert dedup.check(result, result.fingerprint) == "new"
    verdicts = {}
    for line in (23, 24):
        value = dict(_invalid_forms(_invalid()[line - 1]))[form]
        result = parse_record(value, now=NOW, fingerprint=True)
        assert result.outcome == "interactions"  # well-formed on its own
        assert result.fingerprint is not None
        final = dedup.apply(result, result.fingerprint)
        assert final.outcome == "rejected" and final.reason
        assert final.message_id == result.message_id
        verdicts[line] = final.reason
    assert verdicts == {23: "duplicate", 24: "message_id_conflict"}


def test_deduplicator_check_verdicts() -> None:
    dedup = Deduplicator()
    res = ParseResult("interactions", (), message_id="m1")
    assert dedup.check(res, "fp-a") == "new"
    assert dedup.check(res, "fp-a") == "duplicate"
    assert dedup.check(res, "fp-b") == "conflict"
    assert dedup.seen == {"m1": "fp-a"}
    assert dedup.check(ParseResult("rejected", (), "invalid_json"), "x") == "new"


def test_missing_message_id_uses_payload_fingerprint() -> None:
    obj = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u1",
        "timestamp": "2025-03-04T09:12:45.158Z",
        "properties": {"products": [{"product_id": 1}, {"product_id": 2}]},
        "messageId": "",
    }
    obj["event"] = "Cart Viewed"
    result = parse_record(obj, now=NOW)
    fp = payload_fingerprint(obj)
    assert len(fp) == 64 and result.message_id == fp
    assert [ev.message_id for ev in result.interactions] == [f"{fp}:0", f"{fp}:1"]
    # key order does not change the fingerprint; the body does
    assert payload_fingerprint(dict(reversed(list(obj.items())))) == fp
    assert payload_fingerprint({**obj, "userId": "u2"}) != fp
    # a messageId of the wrong type is rejected, not silently replaced
    bad = parse_record({**obj, "messageId": {"id": 1}}, now=NOW)
    assert bad.outcome == "rejected" and bad.reason == "bad_message_id"


# --------------------------------------------------------------------------- 3. never raise


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)

_ids = st.sampled_from(
    [None, "", " ", "usr_1", 42, -7, 4.0, 1.5, True, [], {}, "x" * 300, "a\x00b", "\ud800"]
) | st.text(max_size=12)
_content_ids = st.sampled_from(
    [None, "", "content_12", "CONTENT-7", "content_", "content", 12, 12.0, 1.5, False, {"a": 1}]
) | st.text(max_size=12)
_stamps = st.sampled_from(
    [
        None,
        "2025-03-04T09:12:45.158Z",
        "2025-04-12T18:05:09.350-04:00",
        "2025-07-09T21:14:03.915273116Z",
        "2025-06-02 17:25:00.250z",
        "2099-01-01T00:00:00Z",
        "-0001-11-30T00:00:00+0000",
        "2025-02-30T25:61:00Z",
        1751302861250,
        "1751302861",
        1751302861.5,
        True,
        {"$date": 1},
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
    ]
) | st.text(max_size=30)
_events = st.sampled_from(
    [
        "Product Viewed",
        "order_completed",
        "Products Searched",
        "Product Reviewed",
        "Video Content Playing",
        "Video Playback Started",
        "Cart Viewed",
        "Order Refunded",
        "Checkout Started",
        "whatever",
        "",
        5,
    ]
) | st.text(max_size=20)
_items = st.dictionaries(
    st.sampled_from(
        [
            "product_id",
            "content_id",
            "id",
            "sku",
            "asset_id",
            "price",
            "rating",
            "quantity",
            "position",
            "currency",
        ]
    ),
    _content_ids | _json_scalars,
    max_size=4,
)
_rudderish = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["track", "page", "screen", "identify", "alias", "group", "TRACK", "nope", 3]
        ),
        "event": _events,
        "name": st.text(max_size=10),
        "userId": _ids,
        "anonymousId": _ids,
        "previousId": _ids,
        "groupId": _ids,
        "messageId": _ids,
        "timestamp": _stamps,
        "originalTimestamp": _stamps,
        "receivedAt": _stamps,
        "traits": _json_values,
        "properties": st.one_of(
            _json_values,
            _items.flatmap(
                lambda item: st.fixed_dictionaries(
                    {},
                    optional={
                        "products": st.lists(_items | _json_scalars, max_size=4) | _json_scalars,
                        "query": st.text(max_size=5),
                        "order_id": _json_scalars,
                    },
                ).map(lambda extra, item=item: {**item, **extra})
            ),
        ),
    },
)


def _assert_well_formed(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert result.outcome in OUTCOMES
    assert result.reason != "internal_error", result.detail  # the catch-all never fires
    assert isinstance(result.interactions, tuple)
    if result.outcome == "interactions":
        assert result.interactions and result.reason is None
        assert isinstance(result.message_id, str) and result.message_id
    else:
        assert result.interactions == ()
        assert isinstance(result.reason, str) and result.reason
    for ev in result.interactions:
        assert isinstance(ev, InteractionEvent)
        assert isinstance(ev.user_id, str) and 0 < len(ev.user_id) <= 256
        assert isinstance(ev.content_id, str) and 0 < len(ev.content_id) <= 128
        assert ev.content_id == ev.content_id.strip()
        assert ev.timestamp.tzinfo is UTC and ev.timestamp.microsecond % 1000 == 0
        assert ev.weight is None or isinstance(ev.weight, float)
        assert ev.message_id.startswith(result.message_id)
        assert "message_id" not in ev.properties
        orjson.dumps(dict(ev.properties))  # JSON-serialisable for the buffer


_FAST = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_FAST
@given(_json_values)
def test_arbitrary_json_values_never_raise(value: Any) -> None:
    _assert_well_formed(parse_record(json.dumps(value).encode(), now=NOW))
    if isinstance(value, dict):
        _assert_well_formed(parse_record(value, now=NOW))
    else:
        assert parse_record(value, now=NOW).outcome == "rejected"


@_FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _assert_well_formed(parse_record(data, now=NOW))


@_FAST
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    _assert_well_formed(parse_record(text, now=NOW))


@settings(
    max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_rudderish)
def test_rudderstack_shaped_payloads_never_raise(obj: dict[str, Any]) -> None:
    result = parse_record(obj, now=NOW, fingerprint=True)
    _assert_well_formed(result)
    try:
        data = orjson.dumps(obj)
    except TypeError:  # ints beyond 64 bits cannot arrive as JSON
        return
    from_bytes = parse_record(data, now=NOW, fingerprint=True)
    _assert_well_formed(from_bytes)
    assert (from_bytes.outcome, from_bytes.reason) == (result.outcome, result.reason)
    assert from_bytes.interactions == result.interactions


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        "",
        b"\x00{}",
        "\x00{}",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe",
        '"\\ud800"',
        "\ud800",
        b"[1]",
        b"null",
        b"NaN",
        b'{"a": Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b"{" * 3 + b"}",
        b" " * (256 * 1024 + 1),
        12,
        1.5,
        object(),
        [{"type": "track"}],
        bytearray(b"{}"),
        memoryview(b"{}"),
        MappingProxyType({"type": "track"}),
        {"type": "track", "odd": {1, 2}, 3: object()},
        {"type": "track", "event": "Product Viewed", "userId": "u", "properties": None},
    ],
    ids=repr,
)
def test_odd_inputs_are_rejected_not_raised(value: Any) -> None:
    result = parse_record(value, now=NOW)
    _assert_well_formed(result)
    assert result.outcome == "rejected"


def test_depth_bombs_do_not_blow_the_stack() -> None:
    deep: dict[str, Any] = {"type": "track"}
    node = deep
    for _ in range(sys.getrecursionlimit() * 3):
        node["n"] = {}
        node = node["n"]
    assert parse_record(deep, now=NOW).reason == "too_deep"
    cyclic: dict[str, Any] = {"type": "track"}
    cyclic["self"] = cyclic
    assert parse_record(cyclic, now=NOW).reason == "too_deep"
    exactly_32 = b'{"a":' * 31 + b"{}" + b"}" * 31
    assert parse_record(exactly_32, now=NOW).reason != "too_deep"
    assert parse_record(b'{"a":' + exactly_32 + b"}", now=NOW).reason == "too_deep"
    arrays = b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"
    assert parse_record(arrays, now=NOW).reason == "too_deep"
    # brackets inside strings do not count
    braces_in_text = orjson.dumps({"type": "track", "s": "{[" * 100})
    assert parse_record(braces_in_text, now=NOW).reason != "too_deep"


def test_size_limit_is_bytes() -> None:
    base = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u",
        "messageId": "m",
        "timestamp": "2025-03-04T09:12:45.158Z",
        "properties": {"product_id": "1"},
    }
    fits = orjson.dumps({**base, "pad": "x" * (250 * 1024)})
    assert parse_record(fits, now=NOW).outcome == "interactions"
    multibyte = orjson.dumps({**base, "pad": "é" * (130 * 1024)})  # 130 Ki chars, 260 KiB
    assert parse_record(multibyte, now=NOW).reason == "too_large"
    assert parse_record(multibyte.decode(), now=NOW).reason == "too_large"


# --------------------------------------------------------------------------- 4. contract


MID = "1747400180001-e327d433-6591-4693-b633-00e8317f835f"


def _js_payload() -> dict[str, Any]:
    return {
        "anonymousId": "fe497d7c7d99932d",
        "channel": "web",
        "context": {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.11.2"}},
        "event": "Product Viewed",
        "integrations": {"All": True},
        "messageId": MID,
        "originalTimestamp": "2025-05-16T12:56:20.001Z",
        "properties": {"product_id": "content_9001", "price": 12.5, "currency": "EUR"},
        "receivedAt": "2025-05-16T12:53:20.391Z",
        "sentAt": "2025-05-16T12:56:20.351Z",
        "timestamp": "2025-05-16T12:53:20.041Z",
        "type": "track",
        "userId": "usr_77120",
    }


def _variants() -> dict[str, Any]:
    js = _js_payload()
    android = deepcopy(js)
    android.update(
        channel="mobile",
        context={"library": {"name": "com.rudderstack.android.sdk.core", "version": "1.25.1"}},
        originalTimestamp=1747400180001,
        timestamp=1747400000041,
        receivedAt=1747400000391,
    )
    android["properties"]["product_id"] = 9001
    python_sdk = deepcopy(js)
    python_sdk.update(
        channel="server",
        timestamp="2025-05-16T12:53:20.041913+00:00",
        originalTimestamp="2025-05-16T12:56:20.001500+00:00",
    )
    python_sdk["properties"]["product_id"] = " CONTENT_9001 "
    go_relay = deepcopy(js)
    go_relay.update(timestamp="2025-05-16 08:53:20.041999999-0400", type="Track")
    digits = deepcopy(js)
    digits.update(timestamp="1747400000041")
    return {
        "js_dict": js,
        "js_str": orjson.dumps(js).decode(),
        "js_bytes": orjson.dumps(js),
        "js_bytes_reordered": orjson.dumps(js, option=orjson.OPT_SORT_KEYS),
        "android": orjson.dumps(android),
        "python_sdk": orjson.dumps(python_sdk),
        "go_relay_offset_ns": orjson.dumps(go_relay),
        "epoch_ms_digit_string": orjson.dumps(digits),
    }


def test_equivalent_inputs_give_identical_interactions() -> None:
    results = {name: parse_record(value, now=NOW) for name, value in _variants().items()}
    reference = results.pop("js_dict")
    assert reference.outcome == "interactions" and len(reference.interactions) == 1
    ev = reference.interactions[0]
    assert (ev.user_id, ev.content_id, ev.event_type, ev.weight, ev.message_id) == (
        "usr_77120",
        "9001",
        "view",
        1.0,
        MID,
    )
    assert ev.timestamp == datetime(2025, 5, 16, 12, 53, 20, 41000, tzinfo=UTC)
    for name, result in results.items():
        assert result.interactions == reference.interactions, name


def _core(ev: InteractionEvent) -> tuple[Any, ...]:
    props = {
        k: v for k, v in ev.properties.items() if k not in ("source_event", "content_id_field")
    }
    return (ev.user_id, ev.content_id, ev.event_type, ev.timestamp, ev.weight, ev.message_id, props)


@pytest.mark.parametrize(
    ("event", "id_field"),
    [
        ("Viewed Product", "id"),  # Segment V1
        ("product_viewed", "product_id"),
        ("PRODUCT-VIEWED", "sku"),
        ("  product \t viewed ", "content_id"),
        ("Content Viewed", "content_id"),
    ],
)
def test_event_name_and_id_field_variants_normalise_alike(event: str, id_field: str) -> None:
    ref = parse_record(_js_payload(), now=NOW).interactions[0]
    payload = _js_payload()
    payload["event"] = event
    props = payload["properties"]
    props[id_field] = props.pop("product_id")
    (ev,) = parse_record(orjson.dumps(payload), now=NOW).interactions
    assert _core(ev) == _core(ref)
    assert ev.properties["source_event"] == event
    assert ev.properties["content_id_field"] == id_field


# --------------------------------------------------------------------------- 5. units


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("content_1234", "1234"),
        ("CONTENT_1234", "1234"),
        ("content-0042", "0042"),
        ("content:7", "7"),
        ("content7", "7"),
        ("  content_55 \t", "55"),
        (1234, "1234"),
        (-3, "-3"),
        (40412.0, "40412"),
        ("LB-7730-PB", "LB-7730-PB"),
        ("content_abc", "content_abc"),
        ("contents_12", "contents_12"),
        ("content_12x", "content_12x"),
        ("content_١٢", "content_١٢"),  # non-ASCII digits are not digits here
        ("書籍-9", "書籍-9"),
        ("x" * 128, "x" * 128),
        ("content_", None),
        ("content", None),
        ("CONTENT-", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("x" * 129, None),
        ("content_12\x0034", None),
        ("ab\x85", None),
        ("\x1fab", None),
        ("ab\x7f", None),
        ("a\ud800", None),
        (1234.56, None),
        (float("nan"), None),
        (float("inf"), None),
        (True, None),
        ({"value": "content_1"}, None),
        (["1"], None),
    ],
)
def test_normalize_content_id(raw: Any, expected: str | None) -> None:
    assert normalize_content_id(raw) == expected


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-03-04T09:12:45.158Z", _utc(2025, 3, 4, 9, 12, 45, 158000)),
        ("2025-04-12T18:05:09.350-04:00", _utc(2025, 4, 12, 22, 5, 9, 350000)),
        ("2025-04-12T18:05:09.350-0400", _utc(2025, 4, 12, 22, 5, 9, 350000)),
        ("2025-05-20T12:11:33.160+05:30", _utc(2025, 5, 20, 6, 41, 33, 160000)),
        ("2025-06-20T18:30:11.482913+00:00", _utc(2025, 6, 20, 18, 30, 11, 482000)),
        ("2025-07-09T21:14:03.915273116Z", _utc(2025, 7, 9, 21, 14, 3, 915000)),
        ("2025-07-09T21:14:03.9Z", _utc(2025, 7, 9, 21, 14, 3, 900000)),
        ("2025-06-02 17:25:00.250z", _utc(2025, 6, 2, 17, 25, 0, 250000)),
        ("2025-06-02T17:25:00Z", _utc(2025, 6, 2, 17, 25)),
        ("2025-08-03T12:00:00.000", _utc(2025, 8, 3, 12)),
        ("2025-08-03 12:00:00", _utc(2025, 8, 3, 12)),
        ("2025-08-03T12:00:00,5Z", _utc(2025, 8, 3, 12, 0, 0, 500000)),
        (" 2025-03-04T09:12:45.158Z ", _utc(2025, 3, 4, 9, 12, 45, 158000)),
        (1751302861250, _utc(2025, 6, 30, 17, 1, 1, 250000)),
        ("1751302861250", _utc(2025, 6, 30, 17, 1, 1, 250000)),
        (1751302861, _utc(2025, 6, 30, 17, 1, 1)),
        ("1751302861", _utc(2025, 6, 30, 17, 1, 1)),
        (1751302861.2509, _utc(2025, 6, 30, 17, 1, 1, 250000)),
        (1751302861250.9, _utc(2025, 6, 30, 17, 1, 1, 250000)),
        ("-0001-11-30T00:00:00+0000", None),
        ("2025-02-30T25:61:00Z", None),
        ("2025-02-28T12:00:60Z", None),
        ("2025-02-28T12:00:00+24:00", None),
        ("invalid timestamp format", None),
        ("2025-06-02", None),
        ("2025-06-02X17:25:00", None),
        ("20250602T172500Z", None),
        ("2025-W10-2T09:12:45.158Z", None),
        ("2025-06-02T17:25Z", None),
        ("2025-06-02T17:25:00.1234567890Z", None),
        ("\uff12\uff10\uff12\uff15-06-02T17:25:00Z", None),
        ("9999-12-31T23:59:59-23:59", None),
        ("0001-01-01T00:00:00+23:59", None),
        (100_000_000_000, None),  # between the seconds and the ms ranges
        (999_999_999_999, None),
        (99_999_999_999, _utc(5138, 11, 16, 9, 46, 39)),
        (100_000_000_000_000, None),
        (999_999_999, None),
        (-1751302861250, None),
        ("", None),
        (True, None),
        (None, None),
        ({"$date": 1}, None),
        (float("nan"), None),
    ],
)
def test_parse_timestamp_forms(raw: Any, expected: datetime | None) -> None:
    got = parse_timestamp(raw)
    assert got == expected
    if got is not None:
        assert got.tzinfo is UTC


def _track(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u1",
        "messageId": "m1",
        "properties": {"product_id": "content_1"},
    }
    base.update(fields)
    return base


def test_timestamp_precedence_and_plausibility_window() -> None:
    good = "2025-03-04T09:12:45.158Z"
    later = "2025-03-04T09:15:00.000Z"
    r = parse_record(_track(timestamp="1999-01-01T00:00:00Z", originalTimestamp=good), now=NOW)
    ev = r.interactions[0]
    assert ev.timestamp == parse_timestamp(good)
    assert ev.properties["timestamp_field"] == "originalTimestamp"
    r = parse_record(_track(timestamp=True, originalTimestamp="nope", receivedAt=later), now=NOW)
    assert r.interactions[0].properties["timestamp_field"] == "receivedAt"
    # upper bound: receivedAt + 24 h (when receivedAt is itself plausible), else now + 24 h
    r = parse_record(
        _track(timestamp="2025-03-05T09:15:00.001Z", receivedAt="2025-03-04T09:15:00.000Z"),
        now=NOW,
    )
    assert r.interactions[0].properties["timestamp_field"] == "receivedAt"
    assert parse_record(_track(timestamp="2026-01-01T23:59:59.999Z"), now=NOW).ok
    r = parse_record(_track(timestamp="2026-01-02T00:00:00.001Z"), now=NOW)
    assert r.reason == "implausible_timestamp"
    assert parse_record(_track(timestamp="2010-01-01T00:00:00Z"), now=NOW).ok
    r = parse_record(_track(timestamp="2009-12-31T23:59:59.999Z"), now=NOW)
    assert r.reason == "implausible_timestamp"
    assert parse_record(_track(), now=NOW).reason == "no_timestamp"
    # a naive "now" is read as UTC; the default is the wall clock
    naive_now = datetime(2026, 1, 1)
    assert parse_record(_track(timestamp="2026-01-01T12:00:00Z"), now=naive_now).ok
    assert parse_record(_track(timestamp="2099-01-01T00:00:00Z")).reason == (
        "implausible_timestamp"
    )


@pytest.mark.parametrize(
    ("rating", "weight", "reason"),
    [
        ("4", 4.0, None),
        (5, 5.0, None),
        (0, 0.0, None),
        ("3.5", 3.5, None),
        (None, None, None),
        ("", None, None),
        (6, None, "rating_out_of_range"),
        ("-1", None, "rating_out_of_range"),
        ("five", None, "bad_rating"),
        (True, None, "bad_rating"),
        ([5], None, "bad_rating"),
        ("nan", None, "bad_rating"),
    ],
)
def test_rating_weight(rating: Any, weight: float | None, reason: str | None) -> None:
    props: dict[str, Any] = {"product_id": "content_1"}
    if rating is not None:
        props["rating"] = rating
    r = parse_record(
        _track(event="Product Reviewed", timestamp="2025-03-04T09:12:45.158Z", properties=props),
        now=NOW,
    )
    assert r.reason == reason
    if reason is None:
        (ev,) = r.interactions
        assert ev.event_type == "rate" and ev.weight == weight


TS = "2025-03-04T09:12:45.158Z"


@pytest.mark.parametrize(
    ("payload", "outcome", "reason"),
    [
        (_track(event="Promotion Viewed"), "no_interaction", "unmapped_event"),
        (_track(event="x" * 5000), "no_interaction", "unmapped_event"),
        (_track(event=7), "rejected", "bad_event"),
        (_track(event=None), "rejected", "no_event"),
        (_track(type=None), "rejected", "no_type"),
        (_track(type=["track"]), "rejected", "bad_type"),
        (_track(userId=7.0), "rejected", "bad_user_id"),
        (_track(userId=True), "rejected", "bad_user_id"),
        (_track(userId={"id": 1}), "rejected", "bad_user_id"),
        (_track(userId="u\x01"), "rejected", "bad_user_id"),
        (_track(userId=None, anonymousId="a" * 257), "rejected", "user_id_too_long"),
        (_track(properties=[1]), "rejected", "bad_properties"),
        (_track(properties={"product_id": "content_"}), "rejected", "bad_content_id"),
        (_track(event="Cart Viewed", properties={"products": "x"}), "rejected", "bad_products"),
        (_track(event="Cart Viewed", properties={}), "no_interaction", "no_products"),
        (
            _track(event="Product List Viewed", properties={"products": []}),
            "no_interaction",
            "empty_products",
        ),
        (
            _track(event="Products Searched", properties={"query": "q"}),
            "no_interaction",
            "no_products",
        ),
        (_track(event="Order Refunded", properties={}), "no_interaction", "no_content_id"),
        (_track(event="Order Completed", properties={}), "rejected", "no_content_id"),
        (_track(event="Video Content Playing"), "no_interaction", "heartbeat"),
        (_track(type="page", properties={}), "no_interaction", "no_content_id"),
        (
            _track(type="identify", userId=None, anonymousId="a", traits={"x": 1}),
            "identity",
            "identify",
        ),
        (
            _track(type="identify", userId=None, anonymousId="a", context={"traits": {"x": 1}}),
            "identity",
            "identify",
        ),
        (_track(type="alias", previousId="u1"), "rejected", "alias_same_id"),
        (_track(type="alias", previousId=1, userId="1"), "rejected", "alias_same_id"),
        (_track(type="alias", previousId="a0"), "identity", "alias"),
        (_track(type="group"), "rejected", "group_missing_id"),
        (_track(type="group", groupId="g1"), "identity", "group"),
    ],
)
def test_rule_outcomes(payload: dict[str, Any], outcome: str, reason: str) -> None:
    payload.setdefault("timestamp", TS)
    r = parse_record(payload, now=NOW)
    assert (r.outcome, r.reason) == (outcome, reason), r.detail


def test_order_fan_out_and_fallbacks() -> None:
    products = [None, {"product_id": "content_1", "quantity": 2}, {"sku": "S-2"}, {"price": 1}]
    r = parse_record(
        _track(
            event="Order Completed",
            timestamp=TS,
            properties={"orderId": "o-9", "products": products},
        ),
        now=NOW,
    )
    assert [(e.content_id, e.message_id) for e in r.interactions] == [
        ("1", "m1:1"),
        ("S-2", "m1:2"),
    ]
    assert all(e.properties["order_id"] == "o-9" and e.weight == 5.0 for e in r.interactions)
    assert r.interactions[0].properties["quantity"] == 2
    # empty products[] but a top-level id: the properties are the item (no suffix)
    r = parse_record(
        _track(
            event="Checkout Started",
            timestamp=TS,
            properties={"products": [], "product_id": "content_3"},
        ),
        now=NOW,
    )
    assert [(e.content_id, e.message_id, e.event_type) for e in r.interactions] == [
        ("3", "m1", "checkout")
    ]
    # products[] is ignored for item events
    r = parse_record(
        _track(timestamp=TS, properties={"products": "junk", "product_id": 5}), now=NOW
    )
    assert r.ok and r.interactions[0].content_id == "5"


def test_video_keys_and_page_screen_ids() -> None:
    r = parse_record(
        _track(event="Video Content Started", timestamp=TS, properties={"asset_id": "content_9"}),
        now=NOW,
    )
    assert r.interactions[0].content_id == "9"
    assert r.interactions[0].properties["content_id_field"] == "asset_id"
    r = parse_record(_track(type="screen", name=None, timestamp=TS, properties={"id": 77}), now=NOW)
    (ev,) = r.interactions
    assert (ev.event_type, ev.weight, ev.properties["source_event"]) == ("view", 1.0, "screen")


def test_property_hygiene() -> None:
    r = parse_record(
        _track(
            timestamp=TS,
            anonymousId=["broken"],
            properties={"product_id": "1", "price": True, "currency": "x" * 300, "query": None},
        ),
        now=NOW,
    )
    (ev,) = r.interactions
    assert ev.properties == {
        "source_event": "Product Viewed",
        "rudder_type": "track",
        "is_anonymous": False,
        "content_id_field": "product_id",
        "timestamp_field": "timestamp",
    }


def test_normalize_event_name() -> None:
    assert normalize_event_name("  Product_Added-to  WISHLIST ") == "product added to wishlist"
