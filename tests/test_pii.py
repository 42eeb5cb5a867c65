"""The `pii` stage: each kind found and redacted with a typed placeholder, checksums
respected (Luhn, IBAN mod 97), look-alikes left alone, redact/drop/flag behaviour."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from curate.stages.pii.detectors import KINDS, scan
from curate.contract.schema import POLARS_SCHEMA
from curate.stages.base import StageContext
from curate.stages.pii.stage import STAGE, Config
from curate.contract.typed_config import ConfigError, load_dataclass
from helpers import pair, records

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def redact(text: str) -> tuple[str, dict]:
    out = scan(pl.DataFrame({"_id": [0], "_t": [text]}), list(KINDS)).row(0, named=True)
    return out["_t"], {k: out[f"n_{k}"] for k in KINDS if out[f"n_{k}"]}


@pytest.mark.parametrize(
    "text,expected,counts",
    [
        ("write to jane.doe+news@mail.example.org today", "write to <EMAIL> today", {"email": 1}),
        ("call +1 415-555-0132 or (212) 555-1234", "call <PHONE> or <PHONE>", {"phone": 2}),
        ("UK office: +44 20 7946 0958.", "UK office: <PHONE>.", {"phone": 1}),
        ("server at 8.8.4.4 replied", "server at <IP_ADDRESS> replied", {"ip_address": 1}),
        ("v6 2001:db8:85a3::8a2e:370:7334 here", "v6 <IP_ADDRESS> here", {"ip_address": 1}),
        ("pay with 4111 1111 1111 1111", "pay with <CREDIT_CARD>", {"credit_card": 1}),
        ("amex 3782-822463-10005 ok", "amex <CREDIT_CARD> ok", {"credit_card": 1}),
        ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN <IBAN>.", {"iban": 1}),
        ("GB82WEST12345698765432", "<IBAN>", {"iban": 1}),
        ("aws AKIAIOSFODNN7EXAMPLE key", "aws <SECRET> key", {"secret": 1}),
        ("token ghp_" + "A1b2" * 9 + " end", "token <SECRET> end", {"secret": 1}),
        ('api_key = "f8a7d6s5a4d3f2g1h0j9"', 'api_key = "<SECRET>"', {"secret": 1}),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "<SECRET>", {"secret": 1}),
    ],
)
def test_each_kind_is_redacted(text, expected, counts):
    assert redact(text) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN DE89 3704 0044 0532 0130 01 fails mod 97",
        "localhost 127.0.0.1, any 0.0.0.0, multicast 224.0.0.251",
        "scores were 100-1000 and 555-0199 points",
        "fingerprint 2c:4a:9f:11:0e:33:aa:bc:de:f0:12:34:56:78:9a:bc",
        "the year 2023-01-15, version 1.2.3, population 1234567890, 12 345 678",
        "api_key = your_api_key_here_0000",
        "C++ std::vector and a::b",
    ],
)
def test_look_alikes_are_left_alone(text):
    assert redact(text) == (text, {})


def table(texts) -> pl.DataFrame:
    return records([[{"role": "system", "content": "Be brief."}, *pair(t, f"Noted: {t}")] for t in texts])


def run(texts, **cfg):
    config = load_dataclass(Config, {"kind": "pii", **cfg})
    ctx = StageContext(run_dir=Path("."), config_dir=Path("."), seed=0, stage_dir=Path("."))
    return STAGE(config, ctx).process(table(texts))


def test_redact_rewrites_contents_keeps_ids_and_counts():
    t = table(["mail a@b.io", "nothing here", "call +1 415-555-0132, mail c@d.io"])
    res = run(["mail a@b.io", "nothing here", "call +1 415-555-0132, mail c@d.io"])
    assert res.dropped.height == 0 and res.kept.height == 3
    assert res.kept["id"].to_list() == t["id"].to_list()  # ids are kept: see curate/stages/pii/stage.py
    assert res.kept["messages"][0].to_list()[1]["content"] == "mail <EMAIL>"
    assert res.kept["messages"][0].to_list()[2]["content"] == "Noted: mail <EMAIL>"
    assert res.kept["messages"][1].to_list() == t["messages"][1].to_list()
    assert res.kept["pii_email"].to_list() == [2, 0, 2]
    assert res.kept["pii_phone"].to_list() == [0, 0, 2]
    assert res.stats["found"] == {"secret": 0, "email": 4, "iban": 0, "credit_card": 0, "ip_address": 0, "phone": 2}
    assert res.stats["rows_with_pii"] == 2 and res.stats["rows_redacted"] == 2
    assert res.kept.schema["messages"] == POLARS_SCHEMA["messages"]


def test_private_ips_and_local_phone_numbers():
    assert redact("my computer's IP address is 10.0.0.42")[0] == "my computer's IP address is <IP_ADDRESS>"
    assert redact("Call me on 555-0199 if needed")[0] == "Call me on <PHONE> if needed"
    kept = scan(pl.DataFrame({"_id": [0], "_t": ["router 192.168.1.1, dns 8.8.8.8"]}), ["ip_address"], keep_private_ips=True)
    assert kept["_t"][0] == "router 192.168.1.1, dns <IP_ADDRESS>"


def test_roles_kinds_and_placeholder():
    res = run(["mail a@b.io, ip 8.8.8.8"], roles=["user"], kinds=["email"], placeholder="[{kind}]")
    msgs = res.kept["messages"][0].to_list()
    assert msgs[1]["content"] == "mail [email], ip 8.8.8.8"
    assert msgs[2]["content"] == "Noted: mail a@b.io, ip 8.8.8.8"  # assistant not scanned


def test_drop_with_reason_and_detail():
    res = run(["mail a@b.io", "clean text"], action="drop")
    assert res.kept.height == 1 and res.dropped["_reason"].to_list() == ["pii"]
    assert res.dropped["_detail"].to_list() == ["email=2"]


TEXTS = st.sampled_from(["clean", "mail a@b.io", "card 4111111111111111", "ip 8.8.8.8 and 10.0.0.1",
                         "IBAN GB82WEST12345698765432", "call (212) 555-1234", "bad card 4111111111111112"])


@settings(max_examples=20, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=10))
def test_flag_and_drop_agree(texts):
    flagged = run(texts, action="flag")
    dropped = run(texts, action="drop")
    flags = flagged.kept["pii_flag"]
    assert sorted(dropped.dropped["origin"].to_list()) == sorted(flagged.kept.filter(flags.is_not_null())["origin"].to_list())
    assert flagged.stats["found"] == dropped.stats["found"] == run(texts).stats["found"]
    # flag keeps the text as it was
    assert flagged.kept["messages"].to_list() == table(texts)["messages"].to_list()


def test_config_errors():
    with pytest.raises(ConfigError, match="kinds"):
        load_dataclass(Config, {"kind": "pii", "kinds": ["ssn"]})
    with pytest.raises(ConfigError, match="placeholder"):
        load_dataclass(Config, {"kind": "pii", "placeholder": "XXX"})
    with pytest.raises(ConfigError, match="roles"):
        load_dataclass(Config, {"kind": "pii", "roles": ["bot"]})


@pytest.mark.skipif(not (SHARED / "formats").is_dir(), reason="../shared/data is absent")
def test_real_files_counts():
    from curate.read.sources import SourceConfig
    from curate.read.readers import read_source

    found = {}
    for f in sorted((SHARED / "formats").glob("*.json")):
        t = read_source(SourceConfig(name=f.stem, path=str(f)), SHARED / "formats").table
        config = load_dataclass(Config, {"kind": "pii"})
        res = STAGE(config, StageContext(Path("."), Path("."), 0, Path("."))).process(t)
        found[f.name] = {k: v for k, v in res.stats["found"].items() if v}
        assert res.kept.height == t.height
    print(found)
    # the glaive tool-call demo sends e-mails to addresses given in the chat
    assert found["sharegpt_tools_llamafactory_glaive_demo.json"].get("email", 0) > 0


MIXED = ["call me on 555-0199", "Card 4111 1111 1111 1111 ok", "٤١١١١١١١١١١١١١١١ card in Arabic-Indic digits",
         "é4111111111111111é", "ip 192.168.1.20 and 8.8.8.8", "café 10.0.0.1", "IBAN DE89 3704 0044 0532 0130 00",
         "ÜDE89370400440532013000", "phone +44 20 7946 0958 or (555) 555-0123", "tel: ５５５-０１９９",
         "mail a.b@example.org", "naïve+1 555 0100 2233", "fe80::1 and 2001:db8::ff00:42:8329", "plain text", ""]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(MIXED), st.text(alphabet="0123456789 .-+()é٣:abDE@_", max_size=40)),
                min_size=1, max_size=20))
def test_prefilter_gives_the_patterns_own_matches(texts):
    # the pattern without word boundaries, then the pattern: exactly the pattern's scan
    from curate.stages.pii import detectors

    frame = pl.DataFrame({"_id": pl.Series(range(len(texts)), dtype=pl.UInt32), "_t": texts})
    fast = scan(frame, list(KINDS))
    original = detectors.prefilter_pattern
    detectors.prefilter_pattern = lambda p: p  # one pass with the pattern itself
    try:
        slow = scan(frame, list(KINDS))
    finally:
        detectors.prefilter_pattern = original
    assert fast.equals(slow)


def test_card_shaped_run_of_non_ascii_digits_is_not_a_card():
    # Arabic-Indic digits match the pattern's Unicode \d; the Luhn check used to fail on their cast
    out = scan(pl.DataFrame({"_id": pl.Series([0], dtype=pl.UInt32), "_t": ["٤١١١١١١١١١١١١١١١"]}), ["credit_card"])
    assert out["n_credit_card"].to_list() == [0] and out["_t"].to_list() == ["٤١١١١١١١١١١١١١١١"]
