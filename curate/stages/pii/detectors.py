"""Personal data and secrets in text: detection patterns, checksum validators and
redaction, all as polars column operations.

Each detector is a regex with two groups, a prefix kept as is (often empty) and the value,
plus an optional validator written as a polars expression (Luhn for card numbers, ISO 7064
mod-97 for IBANs, digit counts for phone numbers, public-address ranges for IPs).
A regex alone cannot run a checksum, so matching is done in three column-wise steps:

  1. `replace_all` wraps every candidate in sentinels (two Unicode noncharacters, which
     never occur in interchanged text) -> one string per text;
  2. `split` on the sentinel and `explode` -> one row per text piece; candidates are the
     pieces that start with the value marker, validated all at once;
  3. valid candidates become the typed placeholder (`<EMAIL>`), invalid ones their original
     text, and the pieces are joined back per text.

Only texts in which the pattern matches at all go through steps 1-3. That test takes two
passes: the pattern without its `\\b` (a superset of the matches) over every text, then the
pattern itself over the few texts it leaves. A Unicode `\\b` keeps the regex engine off its
fast DFA on any text with a non-ASCII character; without it the pass over all texts is
about 2.5x faster (measured on the 1M-record benchmark's turns: 0.21 s -> 0.08 s per
digit-shaped detector per 600k turns, 1.8% of them non-ASCII, with the same matches).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import polars as pl

_CUT = "\ufdd0"  # piece separator
_VAL = "\ufdd1"  # marks a piece that is a candidate value

KINDS = ("secret", "email", "iban", "credit_card", "ip_address", "phone")


def _digits(v: pl.Expr) -> pl.Expr:
    return v.str.replace_all(r"\D", "")


# Issuer prefixes with their lengths: Visa, Mastercard (51-55, 2221-2720), Amex, Diners,
# Discover, JCB, UnionPay. A Luhn check alone passes one random digit string in ten.
CARD_NETWORKS = (
    r"^(?:4(?:\d{12}|\d{15}|\d{18})|5[1-5]\d{14}|2[2-7]\d{14}|3[47]\d{13}|3(?:0[0-5]|[68]\d)\d{11}"
    r"|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|35\d{14,17}|62\d{14,17})$"
)


def luhn_valid(v: pl.Expr) -> pl.Expr:
    """Luhn checksum of the digits in `v`, which must also fit a card network's prefix and
    length. Card numbers are ASCII digits: a run of other digits (Arabic-Indic, full-width),
    which the Unicode `\\d` of the pattern finds, is not one (it used to stop the stage with
    a cast error)."""
    d = _digits(v)
    el = pl.element().cast(pl.Int32, strict=False)
    pos = pl.int_range(pl.len())
    doubled = pl.when(pos % 2 == 1).then(pl.when(el * 2 > 9).then(el * 2 - 9).otherwise(el * 2)).otherwise(el)
    total = d.str.split("").list.reverse().list.eval(doubled).list.sum()
    return (
        d.str.contains(CARD_NETWORKS)
        & d.str.contains(r"^[0-9]+$")
        & (total % 10 == 0)
    )


def iban_valid(v: pl.Expr) -> pl.Expr:
    """ISO 13616 IBAN check: move the first four characters to the end, letters -> 10..35,
    the number mod 97 must be 1. The long number is reduced 7 digits at a time so the
    remainder stays in Int64; each step is one expression over the whole column."""
    s = v.str.replace_all(r"\s", "").str.to_uppercase()
    moved = s.str.slice(4) + s.str.slice(0, 4)
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    num = moved.str.replace_many(letters, [str(i) for i in range(10, 36)])
    rem = pl.lit(0, dtype=pl.Int64)
    for i in range(0, 70, 7):  # 34 characters -> at most 68 digits
        chunk = num.str.slice(i, 7)
        # an empty chunk multiplies by 10^0 and adds 0: `rem` is referenced once per step,
        # so the expression grows linearly (a when/otherwise on it would double each step)
        rem = (rem * pl.lit(10, pl.Int64).pow(chunk.str.len_chars()) + chunk.cast(pl.Int64, strict=False).fill_null(0)) % 97
    return s.str.len_chars().is_between(15, 34) & (rem == 1)


def assignable_ipv4(v: pl.Expr) -> pl.Expr:
    """Addresses a machine can hold: not loopback, unspecified, broadcast or multicast
    (127.0.0.1 and 0.0.0.0 identify nobody). Private ranges count: "my computer's IP is
    10.0.0.42" still describes someone's network."""
    return ~v.str.contains(r"^(?:127\.|0\.|255\.255\.255\.255$|2(?:2[4-9]|3\d)\.)")


def public_ipv4(v: pl.Expr) -> pl.Expr:
    """Only globally routable addresses: private and link-local ranges left too
    (`keep_private_ips = true`: router tutorials keep their 192.168.1.1)."""
    return assignable_ipv4(v) & ~v.str.contains(r"^(?:10\.|169\.254\.|192\.168\.|172\.(?:1[6-9]|2\d|3[01])\.)")


def public_ipv6(v: pl.Expr) -> pl.Expr:
    """Global addresses; not loopback/link-local/unique-local/multicast, and not runs of
    two-digit hex pairs, which are key fingerprints and MAC-like ids, not addresses."""
    return ~v.str.to_lowercase().str.contains(r"^(?:::1$|fe80:|fc|fd|ff)") & ~v.str.contains(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+$")


def phone_digits(v: pl.Expr) -> pl.Expr:
    n = _digits(v).str.len_chars()
    return pl.when(v.str.starts_with("+")).then(n.is_between(8, 15)).otherwise(n == 10)


def mixed_secret(v: pl.Expr) -> pl.Expr:
    """A value assigned to `api_key = ...` counts when it looks generated: letters and
    digits, not a placeholder like `your_api_key_here`."""
    return (
        v.str.contains(r"\d") & v.str.contains(r"[A-Za-z]")
        & ~v.str.to_lowercase().str.contains(r"your|example|placeholder|xxxx|here|dummy|sample")
    )


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: str  # group 1: prefix kept verbatim; group 2: the value
    validate: Callable[[pl.Expr], pl.Expr] | None = None


DETECTORS: tuple[Detector, ...] = (
    # secrets: provider key formats (prefix + fixed alphabet and length), private keys, JWTs
    Detector("secret", r"()(-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )?PRIVATE KEY-----)"),
    Detector("secret", r"()\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"),
    Detector("secret", r"()\b(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    Detector("secret", r"()\b(sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,})"),
    Detector("secret", r"()\b(xox[abposr]-[A-Za-z0-9\-]{10,})"),
    Detector("secret", r"()\b(AIza[0-9A-Za-z_\-]{35})"),
    Detector("secret", r"()\b([rs]k_(?:live|test)_[0-9A-Za-z]{16,})"),
    Detector("secret", r"()\b(eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})"),
    Detector(
        "secret",
        r"((?i:\b(?:api[_\-]?key|apikey|secret[_\-]?key|access[_\-]?token|auth[_\-]?token|client[_\-]?secret|password|passwd)"
        r"\b['\"]?\s*[:=]\s*['\"]?))([A-Za-z0-9_\-+/.]{16,})",
        mixed_secret,
    ),
    Detector("email", r"()\b([A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,})\b"),
    Detector("iban", r"()\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b", iban_valid),
    Detector("credit_card", r"()\b(\d(?:[ \-]?\d){12,18})\b", luhn_valid),
    Detector("ip_address", r"()\b((?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))\b", assignable_ipv4),
    Detector("ip_address", r"()\b((?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){2,6}:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,4})\b", public_ipv6),
    Detector(
        "phone",
        # international (+CC ...) or North-American (555) 555-0123 / 555-555-0123 layouts;
        # bare digit runs are left alone (they are quantities, ids and dates far more often)
        r"(^|[^\w+])(\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}"
        r"|(?:\(\d{3}\)[ ]?|\d{3}[ .\-])\d{3}[ .\-]\d{4})\b",
        phone_digits,
    ),
    # a 7-digit local number only where the text says it is one ("call me on 555-0199")
    Detector("phone", r"((?i:\b(?:call|phone|tel|telephone|mobile|cell|fax|whatsapp|text me|reach me)\b[^\d\n]{0,20}))(\d{3}[ .\-]\d{4})\b"),
)


def prefilter_pattern(pattern: str) -> str:
    """`pattern` without its word boundaries (`\\b`): a zero-width assertion removed only
    widens the matches, so every text the pattern matches, this one matches too. (No
    detector writes a literal backslash before a `b`, which the rewrite would break.)"""
    return pattern.replace(r"\b", "")


def _matching(frame: pl.DataFrame, pattern: str) -> pl.DataFrame:
    """The rows of `frame` whose `_t` matches `pattern`, in order: the candidates by
    `prefilter_pattern` first, then the pattern itself on those only."""
    wide = prefilter_pattern(pattern)
    if wide != pattern:
        frame = frame.filter(pl.col("_t").str.contains(wide))
    return frame.filter(pl.col("_t").str.contains(pattern))


def placeholder(kind: str, template: str) -> str:
    return template.replace("{KIND}", kind.upper()).replace("{kind}", kind)


def scan(texts: pl.DataFrame, kinds: list[str], template: str = "<{KIND}>", keep_private_ips: bool = False) -> pl.DataFrame:
    """`texts` has columns `_id` (unique) and `_t`. Returns `_id`, `_t` redacted, and one
    count column per kind (`n_<kind>`). Detectors run in order on the text redacted so
    far, so a card number already replaced is not counted again as a phone number."""
    out = texts.select("_id", "_t", *[pl.lit(0, pl.Int32).alias(f"n_{k}") for k in kinds])
    for det in DETECTORS:
        if det.kind not in kinds:
            continue
        has = _matching(out, det.pattern)
        if has.height == 0:
            continue
        pieces = (
            has.select("_id", pl.col("_t").str.replace_all(det.pattern, f"${{1}}{_CUT}{_VAL}${{2}}{_CUT}").str.split(_CUT).alias("_p"))
            .explode("_p")
            .with_columns(pl.col("_p").str.starts_with(_VAL).alias("_cand"), pl.col("_p").str.strip_prefix(_VAL).alias("_v"))
        )
        check = public_ipv4 if (keep_private_ips and det.validate is assignable_ipv4) else det.validate
        valid = pl.col("_cand") if check is None else (pl.col("_cand") & check(pl.col("_v")).fill_null(False))
        pieces = pieces.with_columns(valid.alias("_ok"))
        rebuilt = pieces.group_by("_id", maintain_order=True).agg(
            pl.when(pl.col("_ok")).then(pl.lit(placeholder(det.kind, template)))
            .otherwise(pl.col("_v")).str.join("").alias("_new"),
            pl.col("_ok").sum().cast(pl.Int32).alias("_n"),
        )
        out = (
            out.join(rebuilt, on="_id", how="left", maintain_order="left")
            .with_columns(
                pl.coalesce("_new", "_t").alias("_t"),
                (pl.col(f"n_{det.kind}") + pl.col("_n").fill_null(0)).alias(f"n_{det.kind}"),
            )
            .drop("_new", "_n")
        )
    return out
