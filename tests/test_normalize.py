import polars as pl
from hypothesis import given, settings, strategies as st

from curate.contract.schema import POLARS_SCHEMA, conversation_id
from curate.stages.normalize import Config, Normalize


def table(convs):
    return pl.DataFrame({
        "id": [f"r{i}" for i in range(len(convs))], "source": ["s"] * len(convs), "task": ["t"] * len(convs),
        "messages": convs, "meta": ["{}"] * len(convs), "origin": [f"f:{i}" for i in range(len(convs))],
    }, schema=POLARS_SCHEMA)


def run(convs, **kw):
    return Normalize(Config(**kw), None).process(table(convs))


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def test_unicode_control_and_whitespace():
    r = run([[u("Cafe\u0301\r\nline  \n\n\n\nend\x07 "), a("  ok\u00a0done\t\n")]])
    msgs = r.kept["messages"][0].to_list()
    assert msgs[0]["content"] == "Caf\u00e9\nline\n\nend"
    assert msgs[1]["content"] == "ok done"
    assert r.kept["id"][0] == conversation_id(msgs)


def test_code_indentation_kept():
    code = "def f(x):\n    return x  # two spaces\n"
    r = run([[u("write f"), a(code)]])
    assert r.kept["messages"][0].to_list()[1]["content"] == code.rstrip()


def test_no_input_placeholders_removed_from_prompt():
    for ph in ["<noinput>", "N/A", "<no input>", "None", "  n/a  "]:
        r = run([[u(f"Name a fruit.\n\n{ph}"), a("Apple")]])
        assert r.kept["messages"][0].to_list()[0]["content"] == "Name a fruit.", ph


def test_reasons():
    r = run([
        [u("q"), a("N/A")],                    # placeholder answer
        [u(""), a("x")],                       # empty prompt
        [a("x"), u("q")],                      # no assistant after user
        [u("q"), a("x"), {"role": "system", "content": "s"}, u("q2"), a("y")],
        [u("q"), u("q again"), a("x")],        # not alternating
        [a("hello"), u("q"), a("x")],          # assistant speaks first
        [u("ok"), a("fine")],
    ])
    assert r.dropped["_reason"].to_list() == ["empty_answer", "empty_prompt", "no_assistant_after_user",
                                              "system_not_first", "roles_not_alternating", "assistant_first"]
    assert r.kept.height == 1
    assert r.dropped["id"].to_list() == ["r0", "r1", "r2", "r3", "r4", "r5"]  # dropped rows as read


def test_alternation_optional_and_trailing_turns_trimmed():
    r = run([[u("q"), u("more"), a("x"), u("bye")]], require_alternation=False)
    assert [m["role"] for m in r.kept["messages"][0].to_list()] == ["user", "user", "assistant"]


def test_tool_turns_kept_between_assistant_turns():
    conv = [u("weather?"), a('{"call": "w"}'), {"role": "tool", "content": '{"t": 3}'}, a("3 degrees")]
    r = run([conv])
    assert r.kept["messages"][0].to_list() == [{**m, "extra": None} for m in conv]


def test_extra_kept_and_hashed():
    calls = '{"tool_calls": [{"function": {"arguments": "{}", "name": "w"}, "type": "function"}]}'
    conv = [u("weather?"), {"role": "assistant", "content": "Let me look.", "extra": calls},
            {"role": "tool", "content": "3", "extra": '{"tool_call_id": "c1"}'}, a("3 degrees")]
    r = run([conv])
    assert r.kept["messages"][0].to_list() == [{"extra": None, **m} for m in conv]
    assert r.kept["id"][0] == conversation_id(conv) != conversation_id([{**m, "extra": None} for m in conv])


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant", "tool"]), text), min_size=1, max_size=5),
                min_size=1, max_size=8))
def test_rows_conserved_and_idempotent(convs):
    convs = [[{"role": r, "content": c} for r, c in conv] for conv in convs]
    r = run(convs)
    assert r.kept.height + r.dropped.height == len(convs)
    again = Normalize(Config(), None).process(r.kept)
    assert again.dropped.height == 0
    assert again.kept["messages"].to_list() == r.kept["messages"].to_list()


def _reference(convs, require_alternation=True):
    """The structural part of normalize as it was written before (per-list positions
    inside list.eval), applied to already-cleaned turns: (trimmed messages, reason)."""
    el = pl.element()
    role, content = el.struct.field("role"), el.struct.field("content")
    pos = pl.int_range(pl.len())
    df = table(convs).with_columns(pl.col("messages").list.eval(el.filter(pos <= pos.filter(role == "assistant").max())))
    calls = el.struct.field("extra").str.json_path_match("$.tool_calls").is_not_null()
    prev = role.shift(1)
    msgs = pl.col("messages")
    first_user = msgs.list.eval(pos.filter(role == "user").min()).list.first()
    first_asst = msgs.list.eval(pos.filter(role == "assistant").min()).list.first()
    last_asst = msgs.list.eval(pos.filter(role == "assistant").max()).list.first()
    reasons = [
        (first_user.is_null() | last_asst.is_null() | (last_asst < first_user), "no_assistant_after_user"),
        (msgs.list.eval(((role == "user") & (content == "")).any()).list.first(), "empty_prompt"),
        (msgs.list.eval(((role == "assistant") & (content == "") & ~calls).any()).list.first(), "empty_answer"),
        (msgs.list.eval(((role == "system") & (pos > 0)).any()).list.first(), "system_not_first"),
        (first_asst < first_user, "assistant_first"),
    ]
    if require_alternation:
        same = ((role == "user") & (prev == "user")) | ((role == "assistant") & (prev == "assistant"))
        reasons.append((msgs.list.eval(same.any()).list.first(), "roles_not_alternating"))
    reason = pl.lit(None, pl.String)
    for cond, name in reversed(reasons):
        reason = pl.when(cond.fill_null(False)).then(pl.lit(name)).otherwise(reason)
    out = df.with_columns(reason.alias("r"))
    return out["messages"].to_list(), out["r"].to_list()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant", "tool"]),
                                   st.sampled_from(["", "x", "héllo 世界", "ok"])), min_size=0, max_size=6),
                min_size=1, max_size=10), st.booleans())
def test_structure_checks_equal_the_per_list_positions(convs, alternation):
    """Trimming and every structural reason equal the earlier per-list position code, on
    turns whose text normalisation changes nothing (so only the structure is compared)."""
    convs = [[{"role": r, "content": c} for r, c in conv] for conv in convs]
    # the cleaning step removes empty system/tool turns first; the reference starts after it
    cleaned = [[m for m in conv if not (m["role"] in ("system", "tool") and m["content"] == "")] for conv in convs]
    want_msgs, want_reasons = _reference(cleaned, alternation)
    r = run(convs, require_alternation=alternation)
    got = dict(zip(r.dropped["origin"].to_list(), r.dropped["_reason"].to_list()))
    kept = dict(zip(r.kept["origin"].to_list(), r.kept["messages"].to_list()))
    for i, (msgs, reason) in enumerate(zip(want_msgs, want_reasons)):
        if reason is None:
            assert kept[f"f:{i}"] == msgs
        else:
            assert got[f"f:{i}"] == reason
