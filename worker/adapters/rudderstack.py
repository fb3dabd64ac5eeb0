"""RudderStack event normaliser: one Kafka record -> zero or more InteractionEvents. Pure.

Implements the rules of ``shared/rudderstack/SPEC.md`` section 5:

* decode (<= 256 KiB, no Avro ``0x00`` magic byte, strict UTF-8 and JSON, an
  object nested at most 32 deep),
* call ``type`` / user id / ``messageId`` validation,
* event-name mapping to ``(event_type, weight)``,
* timestamp selection (first *plausible* of ``timestamp`` -> ``originalTimestamp``
  -> ``receivedAt``), truncated to milliseconds in UTC,
* content-id normalisation (``content_1234`` -> ``1234``) and ``products[]`` fan-out.

:func:`parse_record` is the entry point for one Kafka record value; it never
raises. Deduplication on ``messageId`` (rule 9) is stateful and belongs to the
buffer; :func:`payload_fingerprint` and the tiny :class:`Deduplicator` model it.

Reason codes (``ParseResult.reason``):

* rejected, decoding: ``empty_record``, ``bad_input_type``, ``too_large``,
  ``avro_record``, ``invalid_utf8``, ``invalid_json``, ``not_object``, ``too_deep``
* rejected, envelope: ``no_type``, ``bad_type``, ``no_user_id``, ``bad_user_id``,
  ``user_id_too_long``, ``bad_message_id``, ``message_id_too_long``,
  ``bad_properties``, ``no_event``, ``bad_event``
* rejected, time: ``no_timestamp``, ``bad_timestamp``, ``implausible_timestamp``
* rejected, items: ``no_content_id``, ``bad_content_id``, ``empty_products``,
  ``bad_products``, ``bad_rating``, ``rating_out_of_range``
* rejected, identity calls: ``empty_identify``, ``alias_missing_id``,
  ``alias_same_id``, ``bad_previous_id``, ``previous_id_too_long``,
  ``group_missing_id``, ``bad_group_id``, ``group_id_too_long``
* rejected by :class:`Deduplicator`: ``duplicate``, ``message_id_conflict``;
  ``internal_error`` is a bug guard that should never fire
* no_interaction: ``unmapped_event``, ``heartbeat``, ``no_content_id`` (page/screen
  or refund without an id), ``no_products`` / ``empty_products`` (list, search and
  cart events)
* identity: ``identify``, ``alias``, ``group``
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, cast

import orjson

from worker.recsys_core.types import InteractionEvent

__all__ = [
    "MAX_CONTENT_ID_LEN",
    "MAX_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_USER_ID_LEN",
    "Deduplicator",
    "Outcome",
    "ParseResult",
    "normalize_content_id",
    "normalize_event",
    "normalize_event_name",
    "normalize_events",
    "parse_record",
    "parse_timestamp",
    "payload_fingerprint",
]

Outcome = Literal["interactions", "no_interaction", "identity", "rejected"]

MAX_RECORD_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 32
MAX_USER_ID_LEN: Final = 256
MAX_CONTENT_ID_LEN: Final = 128
MAX_MESSAGE_ID_LEN: Final = 256
MAX_PROPERTY_STR_LEN: Final = 256

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_PLAUSIBLE: Final = datetime(2010, 1, 1, tzinfo=UTC)
_FUTURE_SLACK: Final = timedelta(hours=24)

_CALL_TYPES: Final = frozenset({"identify", "track", "page", "screen", "group", "alias"})

# Where an item's id may live, in order of preference (SPEC 5.5).
_ITEM_KEYS: Final = ("product_id", "content_id", "id", "sku")
_VIDEO_KEYS: Final = ("content_id", "asset_id", "content_asset_id", "product_id", "id")
# Copied into properties when present: per item first, then the event level.
_ITEM_PROPS: Final = ("price", "quantity", "currency", "position", "rating")
_EVENT_PROPS: Final = ("currency", "order_id", "query")

# id modes
_ITEM = "item"  # the properties object is the item
_PRODUCTS = "products"  # products[] only
_PRODUCTS_OR_ITEM = "products_or_item"
_PRODUCTS_OR_ITEM_OPTIONAL = "products_or_item_optional"
_VIDEO = "video"
_HEARTBEAT = "heartbeat"

# normalised event name -> (event_type, weight, id mode); weight None = from rating.
EVENT_MAP: Final[Mapping[str, tuple[str, float | None, str]]] = {
    "product viewed": ("view", 1.0, _ITEM),
    "viewed product": ("view", 1.0, _ITEM),
    "content viewed": ("view", 1.0, _ITEM),
    "product clicked": ("click", 1.5, _ITEM),
    "product list viewed": ("impression", 0.1, _PRODUCTS),
    "product list filtered": ("impression", 0.1, _PRODUCTS),
    "products searched": ("search", 0.3, _PRODUCTS),
    "product added": ("add_to_cart", 3.0, _ITEM),
    "added product": ("add_to_cart", 3.0, _ITEM),
    "wishlist product added to cart": ("add_to_cart", 3.0, _ITEM),
    "product removed": ("remove_from_cart", -1.0, _ITEM),
    "removed product": ("remove_from_cart", -1.0, _ITEM),
    "product added to wishlist": ("wishlist", 2.5, _ITEM),
    "product removed from wishlist": ("unwishlist", -1.0, _ITEM),
    "product shared": ("share", 2.0, _ITEM),
    "cart viewed": ("cart_view", 0.5, _PRODUCTS),
    "checkout started": ("checkout", 3.5, _PRODUCTS_OR_ITEM),
    "order completed": ("purchase", 5.0, _PRODUCTS_OR_ITEM),
    "completed order": ("purchase", 5.0, _PRODUCTS_OR_ITEM),
    "order refunded": ("refund", -5.0, _PRODUCTS_OR_ITEM_OPTIONAL),
    "order cancelled": ("refund", -5.0, _PRODUCTS_OR_ITEM_OPTIONAL),
    "order canceled": ("refund", -5.0, _PRODUCTS_OR_ITEM_OPTIONAL),
    "product reviewed": ("rate", None, _ITEM),
    "video playback started": ("play", 0.5, _VIDEO),
    "video content started": ("view", 1.0, _VIDEO),
    "video content completed": ("complete", 3.0, _VIDEO),
    "video playback completed": ("complete", 3.0, _VIDEO),
    "video content playing": ("", 0.0, _HEARTBEAT),
}
_PAGE_VIEW: Final = ("view", 1.0, _ITEM)
_MAX_EVENT_NAME_LEN: Final = max(len(k) for k in EVENT_MAP) + 16

# Ids are trimmed of ASCII whitespace only: other controls at the ends mean garbage.
_WS: Final = " \t\n\r\x0b\x0c"
_CONTENT_RE: Final = re.compile(r"content[_:-]?(\d+)", re.IGNORECASE | re.ASCII)
# C0, DEL, C1 controls and (lone) surrogates.
_BAD_CHARS_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ISO_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?",
    re.ASCII,
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What one record became.

    ``outcome`` is ``"interactions"`` (``interactions`` non-empty, ``reason`` None),
    ``"no_interaction"`` (skipped by design: heartbeat, unmapped name, page
    without an id...), ``"identity"`` (identify/alias/group) or ``"rejected"``
    (bad data). ``reason`` is a short machine-readable code, ``detail`` is for
    humans. ``message_id`` is the event's ``messageId`` (the payload
    fingerprint when it has none), unsuffixed; None when the record could not
    be decoded or its ``messageId`` is unusable. Each interaction's own
    ``message_id`` is ``<messageId>:<index>`` for a ``products[]`` line item
    (0-based position in the array) and the bare ``messageId`` otherwise,
    including a one-element ``products[]`` (valid fixture line 8).
    ``fingerprint`` is filled only on request (see :func:`parse_record`).
    """

    outcome: Outcome
    interactions: tuple[InteractionEvent, ...] = ()
    reason: str | None = None
    detail: str | None = None
    message_id: str | None = None
    fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "interactions"


class _Reject(Exception):
    __slots__ = ("detail", "outcome", "reason")

    def __init__(self, reason: str, detail: str, outcome: Outcome = "rejected") -> None:
        self.reason = reason
        self.detail = detail
        self.outcome = outcome


# --------------------------------------------------------------------------- helpers


def _has_bad_chars(s: str) -> bool:
    # isprintable() is a fast C scan; only fall back to the precise check when it fails
    # (it also rejects harmless characters such as NBSP or zero-width joiners).
    return not s.isprintable() and _BAD_CHARS_RE.search(s) is not None


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - exotic objects from a Mapping caller
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def payload_fingerprint(obj: Any) -> str:
    """sha256 hex of the canonical JSON (orjson, sorted keys) of a decoded payload.

    Used as the message id when ``messageId`` is missing, and by the buffer to tell
    an exact redelivery (same id, same fingerprint) from a conflict.
    """
    opts = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    try:
        data = orjson.dumps(obj, option=opts)
    except (TypeError, orjson.JSONEncodeError):
        data = orjson.dumps(_jsonable(obj), option=opts)
    return hashlib.sha256(data).hexdigest()


def _jsonable(obj: Any) -> Any:
    """Best-effort plain-JSON copy of a caller-supplied structure (iterative)."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(obj, root, 0, 0)]
    while stack:
        value, parent, key, depth = stack.pop()
        if depth > MAX_DEPTH * 4:
            parent[key] = "<too deep>"
        elif isinstance(value, Mapping):
            out: dict[str, Any] = {}
            parent[key] = out
            for k, v in value.items():
                sk = _utf8_safe(k) if isinstance(k, str) else _short(k, 1000)
                out[sk] = None
                stack.append((v, out, sk, depth + 1))
        elif isinstance(value, list | tuple):
            lst: list[Any] = [None] * len(value)
            parent[key] = lst
            for i, v in enumerate(value):
                stack.append((v, lst, i, depth + 1))
        elif isinstance(value, int) and not isinstance(value, bool):
            parent[key] = value if -(2**63) <= value < 2**64 else str(value)
        elif isinstance(value, str):
            parent[key] = _utf8_safe(value)
        elif value is None or isinstance(value, float | bool):
            parent[key] = value
        else:
            parent[key] = _short(value, 1000)
    return root[0]


def _utf8_safe(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def _depth_ok(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Nesting depth (the top-level object is 1) <= limit, checked iteratively."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                push((child, depth + 1))
    return True


def _decode(value: Any) -> dict[str, Any]:
    """Record value -> JSON object (SPEC 5.1), or raise _Reject."""
    if isinstance(value, dict):
        obj: Any = value
    elif not isinstance(value, bytes | str) and isinstance(value, Mapping):
        try:
            obj = dict(value)
        except Exception as exc:
            raise _Reject("bad_input_type", f"unreadable mapping: {exc!r}") from None
    else:
        if isinstance(value, str):
            if value[:1] == "\x00":
                raise _Reject("avro_record", "leading 0x00: Confluent Avro wire format")
            if len(value) > MAX_RECORD_BYTES:
                raise _Reject("too_large", f"{len(value)} chars > {MAX_RECORD_BYTES} bytes")
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Reject("invalid_utf8", "string holds lone surrogates") from None
        elif isinstance(value, bytes):
            data = value
        elif isinstance(value, bytearray | memoryview):
            try:
                data = bytes(value)
            except Exception as exc:
                raise _Reject("bad_input_type", f"unreadable buffer: {exc!r}") from None
        elif value is None:
            raise _Reject("empty_record", "record value is null (tombstone)")
        else:
            raise _Reject("bad_input_type", f"record value of type {type(value).__name__}")
        if not data:
            raise _Reject("empty_record", "record value is empty")
        if len(data) > MAX_RECORD_BYTES:
            raise _Reject("too_large", f"{len(data)} bytes > {MAX_RECORD_BYTES}")
        if data[0] == 0:
            raise _Reject("avro_record", "leading 0x00: Confluent Avro wire format")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            msg = str(exc)
            if "depth limit" in msg or "ecursion" in msg:
                raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}") from None
            if "UTF-8" in msg or "utf-8" in msg or "surrogate" in msg:
                raise _Reject("invalid_utf8", msg[:200]) from None
            raise _Reject("invalid_json", msg[:200]) from None
        if not isinstance(obj, dict):
            raise _Reject("not_object", f"top-level JSON {type(obj).__name__}, not an object")
        # Cheap bound first: depth cannot exceed the number of opening brackets.
        if data.count(b"{") + data.count(b"[") <= MAX_DEPTH:
            return cast(dict[str, Any], obj)
    if not _depth_ok(obj):
        raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, bytes | bytearray | memoryview | str):
        return cast(dict[str, Any], obj)
    # A caller-decoded object: measure it as the JSON it would have arrived as.
    try:
        size = len(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError) as exc:
        if "surrogates" in str(exc):  # could never have arrived as UTF-8 bytes
            raise _Reject("invalid_utf8", "string holds lone surrogates") from None
        size = len(orjson.dumps(_jsonable(obj), option=orjson.OPT_NON_STR_KEYS))
    if size > MAX_RECORD_BYTES:
        raise _Reject("too_large", f"{size} bytes as JSON > {MAX_RECORD_BYTES}")
    return cast(dict[str, Any], obj)


def _clean_id(raw: Any, *, max_len: int, what: str) -> str | None:
    """A user/anonymous/message id: non-empty str or int -> str; None when empty/absent."""
    if raw is None:
        return None
    if isinstance(raw, str):
        s = raw.strip(_WS)
        if not s:
            return None
    elif isinstance(raw, int) and not isinstance(raw, bool):
        s = str(raw)
    else:
        raise _Reject(f"bad_{what}", f"{what} of type {type(raw).__name__}")
    if len(s) > max_len:
        raise _Reject(f"{what}_too_long", f"{what} has {len(s)} chars > {max_len}")
    if _has_bad_chars(s):
        raise _Reject(f"bad_{what}", f"{what} holds control characters or surrogates")
    return s


@lru_cache(maxsize=4096)
def normalize_event_name(name: str) -> str:
    """Lower-case, ``_``/``-`` -> space, collapse whitespace."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# --------------------------------------------------------------------------- content ids


class _BadId(Exception):
    pass


def _content_id_or_raise(raw: Any) -> str | None:
    """None when empty/absent; raises _BadId when present but unusable."""
    if raw is None:
        return None
    if isinstance(raw, str):
        s = raw.strip(_WS)
        if not s:
            return None
    elif isinstance(raw, bool):
        raise _BadId(f"boolean id {raw!r}")
    elif isinstance(raw, int):
        s = str(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw) or not raw.is_integer():
            raise _BadId(f"non-integral float id {raw!r}")
        s = str(int(raw))
    else:
        raise _BadId(f"id of type {type(raw).__name__}")
    if len(s) > MAX_CONTENT_ID_LEN:
        raise _BadId(f"id has {len(s)} chars > {MAX_CONTENT_ID_LEN}")
    if _has_bad_chars(s):
        raise _BadId("id holds control characters or surrogates")
    if s[:7].lower() == "content":
        m = _CONTENT_RE.fullmatch(s)
        if m is not None:
            return m.group(1)
        if len(s) <= 8 and s[7:] in ("", "_", ":", "-"):
            raise _BadId(f"bare prefix {s!r}")
    return s


def normalize_content_id(raw_id: Any) -> str | None:
    """``content_1234`` -> ``1234``; ints/integral floats -> str; opaque ids unchanged.

    Returns None for anything unusable: empty, bare ``content_`` prefix, over 128
    characters, control characters, non-integral floats, bools, containers.
    """
    try:
        return _content_id_or_raise(raw_id)
    except _BadId:
        return None


def _resolve_id(item: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(content_id, field) of the first non-empty key; None if none; _BadId if bad."""
    for key in keys:
        raw = item.get(key)
        if raw is None or raw == "":
            continue
        cid = _content_id_or_raise(raw)
        if cid is not None:
            return cid, key
    return None


# --------------------------------------------------------------------------- timestamps


def _parse_str_timestamp(s: str) -> datetime | None:
    if (
        len(s) == 24
        and s[23] == "Z"
        and s[10] == "T"
        and s[19] == "."
        and s[4] == "-"
        and s[7] == "-"
        and s.isascii()
    ):
        # RudderStack's own RFC3339Milli form: the C parser, already UTC and ms-precise.
        try:
            return datetime.fromisoformat(s)
        except ValueError:
            return None
    s = s.strip()
    if not s or len(s) > 64 or not s.isascii():
        return None
    if s.isdigit():
        return _from_epoch_number(int(s))
    m = _ISO_RE.fullmatch(s)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, _z, sign, oh, om = m.groups()
    try:
        dt = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(frac[:3].ljust(3, "0")) * 1000 if frac else 0,
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if sign is not None:
        hours, minutes = int(oh), int(om)
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        try:
            dt = dt - offset if sign == "+" else dt + offset
        except OverflowError:
            return None
    return dt


def _from_epoch_number(n: float) -> datetime | None:
    if 1e12 <= n < 1e14:
        ms = int(n)
    elif 1e9 <= n < 1e11:
        ms = int(n * 1000)
    else:
        return None
    return _EPOCH + timedelta(milliseconds=ms)


def parse_timestamp(value: Any) -> datetime | None:
    """Any SPEC section 4 timestamp form -> aware UTC datetime truncated to ms, or None.

    Strings: RFC3339/ISO with ``T`` or space, 0-9 fraction digits, ``Z``/``z``/
    ``+HH:MM``/``+HHMM`` or naive (= UTC); epoch ms (1e12..1e14) or seconds
    (1e9..1e11) as numbers or digit strings. Plausibility is not checked here.
    """
    if isinstance(value, str):
        return _parse_str_timestamp(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _from_epoch_number(value)
    if isinstance(value, float):
        return _from_epoch_number(value) if math.isfinite(value) else None
    if isinstance(value, datetime):  # from a caller-built Mapping
        try:
            dt = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except (OverflowError, ValueError):
            return None
        return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)
    return None


_TS_FIELDS: Final = ("timestamp", "originalTimestamp", "receivedAt")


def _pick_timestamp(obj: dict[str, Any], now: datetime) -> tuple[datetime, str]:
    get = obj.get
    upper = now + _FUTURE_SLACK
    raw_received = get("receivedAt")
    received = None if raw_received is None else parse_timestamp(raw_received)
    if received is not None and _MIN_PLAUSIBLE <= received <= upper:
        upper = received + _FUTURE_SLACK
    raw = get("timestamp")
    if raw is not None:
        dt = parse_timestamp(raw)
        if dt is not None and _MIN_PLAUSIBLE <= dt <= upper:
            return dt, "timestamp"
    raw = get("originalTimestamp")
    if raw is not None:
        dt = parse_timestamp(raw)
        if dt is not None and _MIN_PLAUSIBLE <= dt <= upper:
            return dt, "originalTimestamp"
    if received is not None and _MIN_PLAUSIBLE <= received <= upper:
        return received, "receivedAt"
    # Error path: say why nothing qualified.
    implausible = []
    present = False
    for name in _TS_FIELDS:
        raw = get(name)
        if raw is None:
            continue
        present = True
        dt = parse_timestamp(raw)
        if dt is not None:
            implausible.append(f"{name}={dt.isoformat()}")
    if implausible:
        raise _Reject(
            "implausible_timestamp",
            f"outside 2010-01-01..{upper.isoformat()}: {', '.join(implausible)}",
        )
    if present:
        raise _Reject("bad_timestamp", "no parseable timestamp/originalTimestamp/receivedAt")
    raise _Reject("no_timestamp", "no timestamp, originalTimestamp or receivedAt")


# --------------------------------------------------------------------------- records


def _scalar(value: Any) -> Any:
    """A property value worth keeping (JSON scalar, short string), else None."""
    if isinstance(value, str):
        return value if len(value) <= MAX_PROPERTY_STR_LEN else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _rating_weight(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _Reject("bad_rating", f"rating of type {type(raw).__name__}")
    if isinstance(raw, str):
        try:
            value = float(raw.strip()) if len(raw) <= 32 else math.nan
        except ValueError:
            raise _Reject("bad_rating", f"rating {_short(raw)} is not a number") from None
    else:
        value = float(raw)
    if not math.isfinite(value):
        raise _Reject("bad_rating", f"rating {_short(raw)} is not a number")
    if not 0.0 <= value <= 5.0:
        raise _Reject("rating_out_of_range", f"rating {value} outside 0..5")
    return value


def _now_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is UTC:
        return now
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def _parse_object(obj: dict[str, Any], now: datetime, mid: str) -> ParseResult:
    raw_type = obj.get("type")
    if raw_type is None:
        raise _Reject("no_type", "missing call type")
    if not isinstance(raw_type, str):
        raise _Reject("bad_type", f"type of JSON type {type(raw_type).__name__}")
    rtype = raw_type.strip().lower()
    if rtype not in _CALL_TYPES:
        raise _Reject("bad_type", f"unknown call type {_short(raw_type)}")

    user = _clean_id(obj.get("userId"), max_len=MAX_USER_ID_LEN, what="user_id")
    anon_raw = obj.get("anonymousId")
    if user is None:
        anon = _clean_id(anon_raw, max_len=MAX_USER_ID_LEN, what="user_id")
        if anon is None:
            raise _Reject("no_user_id", "neither userId nor anonymousId")
        user, is_anon = anon, True
    else:
        is_anon = False
        try:
            anon = _clean_id(anon_raw, max_len=MAX_USER_ID_LEN, what="user_id")
        except _Reject:
            anon = None  # a broken anonymousId next to a good userId is not fatal

    if rtype in ("identify", "alias", "group"):
        return _identity(obj, rtype, mid, has_user_id=not is_anon)

    props = obj.get("properties")
    if props is None:
        props = {}
    elif not isinstance(props, dict):
        raise _Reject("bad_properties", f"properties of type {type(props).__name__}")

    if rtype == "track":
        event = obj.get("event")
        if event is None:
            raise _Reject("no_event", "track call without event name")
        if not isinstance(event, str):
            raise _Reject("bad_event", f"event of type {type(event).__name__}")
        if not event.strip():
            raise _Reject("no_event", "track event name is blank")
        if len(event) > _MAX_EVENT_NAME_LEN:
            raise _Reject("unmapped_event", f"event {_short(event)}", "no_interaction")
        mapping = EVENT_MAP.get(normalize_event_name(event))
        if mapping is None:
            raise _Reject("unmapped_event", f"event {_short(event)}", "no_interaction")
        source_event = event
    else:  # page / screen
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            name = props.get("name")
        if isinstance(name, str) and name.strip():
            source_event = name[:MAX_PROPERTY_STR_LEN]
        else:
            source_event = rtype
        mapping = _PAGE_VIEW
    event_type, base_weight, mode = mapping
    if mode == _HEARTBEAT:
        raise _Reject("heartbeat", f"{source_event} is a progress heartbeat", "no_interaction")

    timestamp, ts_field = _pick_timestamp(obj, now)

    # Resolve the items: list of (message id, item dict, content id, id field).
    items: list[tuple[str, dict[str, Any], str, str]] = []
    products = props.get("products")
    use_products = mode in (_PRODUCTS, _PRODUCTS_OR_ITEM, _PRODUCTS_OR_ITEM_OPTIONAL)
    if use_products and products is not None:
        if not isinstance(products, list):
            raise _Reject("bad_products", f"products of type {type(products).__name__}")
        single = len(products) == 1
        for index, item in enumerate(products):
            if not isinstance(item, dict):
                continue
            try:
                found = _resolve_id(item, _ITEM_KEYS)
            except _BadId:
                continue
            if found is not None:
                items.append((mid if single else f"{mid}:{index}", item, found[0], found[1]))
        if not items and products:
            raise _Reject("bad_products", f"none of {len(products)} products has a usable id")
    if not items:
        if mode == _PRODUCTS:
            reason = "empty_products" if products == [] else "no_products"
            raise _Reject(reason, f"{source_event} without products", "no_interaction")
        # An item event, or an order whose products[] is absent/empty: a top-level
        # id stands in for the item.
        keys = _VIDEO_KEYS if mode == _VIDEO else _ITEM_KEYS
        try:
            found = _resolve_id(props, keys)
        except _BadId as exc:
            raise _Reject("bad_content_id", str(exc)) from None
        if found is None:
            if rtype != "track" or mode == _PRODUCTS_OR_ITEM_OPTIONAL:
                raise _Reject("no_content_id", f"{source_event} names no item", "no_interaction")
            if products == []:
                raise _Reject("empty_products", f"{source_event} with empty products[]")
            raise _Reject("no_content_id", f"{source_event} names no item")
        items.append((mid, props, found[0], found[1]))

    base: dict[str, Any] = {
        "source_event": source_event,
        "rudder_type": rtype,
        "is_anonymous": is_anon,
    }
    if anon is not None:
        base["anonymous_id"] = anon
    for key in _EVENT_PROPS:
        value = props.get(key)
        if value is not None and (value := _scalar(value)) is not None:
            base[key] = value
    if "order_id" not in base:
        value = _scalar(props.get("orderId"))  # Segment V1
        if value is not None:
            base["order_id"] = value

    out: list[InteractionEvent] = []
    for item_mid, item, cid, field in items:
        weight = _rating_weight(item.get("rating")) if base_weight is None else base_weight
        properties = dict(base)
        properties["content_id_field"] = field
        properties["timestamp_field"] = ts_field
        for key in _ITEM_PROPS:
            value = item.get(key)
            if value is not None and (value := _scalar(value)) is not None:
                properties[key] = value
        out.append(
            InteractionEvent(
                user_id=user,
                content_id=cid,
                event_type=event_type,
                timestamp=timestamp,
                weight=weight,
                message_id=item_mid,
                properties=properties,
            )
        )
    return ParseResult("interactions", tuple(out), message_id=mid)


def _non_empty_traits(obj: dict[str, Any]) -> bool:
    context = obj.get("context")
    if isinstance(context, dict):
        traits = context.get("traits")
        if isinstance(traits, dict) and traits:
            return True
    traits = obj.get("traits")
    return isinstance(traits, dict) and bool(traits)


def _identity(obj: dict[str, Any], rtype: str, mid: str, *, has_user_id: bool) -> ParseResult:
    if rtype == "identify":
        if not has_user_id and not _non_empty_traits(obj):
            raise _Reject("empty_identify", "identify with neither userId nor traits")
    elif rtype == "alias":
        previous = _clean_id(obj.get("previousId"), max_len=MAX_USER_ID_LEN, what="previous_id")
        if not has_user_id or previous is None:
            raise _Reject("alias_missing_id", "alias needs both previousId and userId")
        if _clean_id(obj.get("userId"), max_len=MAX_USER_ID_LEN, what="user_id") == previous:
            raise _Reject("alias_same_id", "alias with previousId == userId")
    else:
        group = _clean_id(obj.get("groupId"), max_len=MAX_USER_ID_LEN, what="group_id")
        if group is None:
            raise _Reject("group_missing_id", "group call without groupId")
    return ParseResult("identity", (), rtype, f"{rtype} call", mid)


def parse_record(
    value: bytes | str | Mapping[str, Any] | Any,
    *,
    now: datetime | None = None,
    fingerprint: bool = False,
) -> ParseResult:
    """Normalise one Kafka record value (bytes, str or an already decoded object).

    Never raises. ``now`` (default: wall clock) bounds the plausible-timestamp
    window. With ``fingerprint=True`` the result carries
    :func:`payload_fingerprint` of the decoded object (for redelivery/conflict
    detection by the buffer); it is also the ``message_id`` when ``messageId`` is
    missing.
    """
    message_id: str | None = None
    fp: str | None = None
    try:
        obj = _decode(value)
        try:
            message_id = _clean_id(
                obj.get("messageId"), max_len=MAX_MESSAGE_ID_LEN, what="message_id"
            )
        except _Reject:
            if fingerprint:
                fp = payload_fingerprint(obj)
            raise
        if fingerprint or message_id is None:
            fp = payload_fingerprint(obj)
        if message_id is None:
            message_id = fp
        result = _parse_object(obj, _now_utc(now), message_id or "")
    except _Reject as rej:
        result = ParseResult(rej.outcome, (), rej.reason, rej.detail, message_id)
    except Exception as exc:  # defensive: a bug must not kill the consumer
        detail = f"{type(exc).__name__}: {exc}"[:300]
        result = ParseResult("rejected", (), "internal_error", detail, message_id)
    if fp is not None and fingerprint:
        result = replace(result, fingerprint=fp)
    return result


def normalize_event(raw: Any, *, now: datetime | None = None) -> InteractionEvent | None:
    """First interaction of one payload, or None."""
    result = parse_record(raw, now=now)
    return result.interactions[0] if result.interactions else None


def normalize_events(raws: Iterable[Any], *, now: datetime | None = None) -> list[InteractionEvent]:
    """Normalise many payloads: drop unusable ones, fan out, sort by timestamp (stable)."""
    fixed_now = _now_utc(now)
    out: list[InteractionEvent] = []
    for raw in raws:
        out.extend(parse_record(raw, now=fixed_now).interactions)
    out.sort(key=lambda ev: ev.timestamp)
    return out


# --------------------------------------------------------------------------- dedup model


class Deduplicator:
    """In-memory model of SPEC rule 9 (the worker does this in Redis).

    ``seen`` maps message id -> payload fingerprint. :meth:`check` answers
    ``"new"`` (and records it), ``"duplicate"`` (same id, same body) or
    ``"conflict"`` (same id, different body).
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def check(
        self, result: ParseResult, raw_fingerprint: str
    ) -> Literal["new", "duplicate", "conflict"]:
        mid = result.message_id
        if mid is None:
            return "new"
        previous = self.seen.get(mid)
        if previous is None:
            self.seen[mid] = raw_fingerprint
            return "new"
        return "duplicate" if previous == raw_fingerprint else "conflict"

    def apply(self, result: ParseResult, raw_fingerprint: str) -> ParseResult:
        """``result`` unchanged when new; otherwise a rejection (duplicate / conflict)."""
        verdict = self.check(result, raw_fingerprint)
        if verdict == "new":
            return result
        if verdict == "duplicate":
            return ParseResult(
                "rejected", (), "duplicate", "messageId already seen", result.message_id
            )
        return ParseResult(
            "rejected",
            (),
            "message_id_conflict",
            "messageId already seen with a different body",
            result.message_id,
        )
