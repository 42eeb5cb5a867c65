"""Text views of a conversation as polars expressions, shared by every stage that reads
text (filters, language ID, dedup, decontamination, scoring).

  prompt        system + user (+ tool) turns, joined by newlines
  response      assistant turns, joined by newlines
  conversation  every turn, joined by newlines
  user / assistant / all   aliases used by filters' `on = ...`
"""
from __future__ import annotations

import polars as pl

VIEWS = ("prompt", "response", "conversation", "user", "assistant", "all", "last_user", "last_assistant")


def _join_roles(roles: tuple[str, ...] | None, column: str = "messages") -> pl.Expr:
    el = pl.element()
    if roles is None:
        picked = el.struct.field("content")
    else:
        picked = pl.when(el.struct.field("role").is_in(list(roles))).then(el.struct.field("content"))
    return pl.col(column).list.eval(picked).list.drop_nulls().list.join("\n")


def _last_of(role: str, column: str = "messages") -> pl.Expr:
    el = pl.element()
    picked = pl.when(el.struct.field("role") == role).then(el.struct.field("content"))
    return pl.col(column).list.eval(picked).list.drop_nulls().list.last().fill_null("")


def text_view(view: str, column: str = "messages") -> pl.Expr:
    """A polars String expression for one view of the `messages` column."""
    if view == "prompt":
        return _join_roles(("system", "user", "tool"), column)
    if view == "user":
        return _join_roles(("user",), column)
    if view in ("response", "assistant"):
        return _join_roles(("assistant",), column)
    if view in ("conversation", "all"):
        return _join_roles(None, column)
    if view == "last_user":
        return _last_of("user", column)
    if view == "last_assistant":
        return _last_of("assistant", column)
    raise ValueError(f"unknown text view {view!r}; expected one of {', '.join(VIEWS)}")
