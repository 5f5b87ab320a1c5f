"""The pieces of the Messages translation that need no model: stop sequences found
in streamed text (now the generation's, models/stops.py), the billing line, blocks into messages, alias resolution."""

from __future__ import annotations

import pytest

from lokal.api.anthropic.protocol import MessagesRequest
from lokal.errors import BadRequest
from lokal.models.catalog import resolve_alias
from lokal.models.stops import StopScanner


def _run(stops: list[str], pieces: list[str]) -> tuple[str, str | None]:
    scanner = StopScanner(stops)
    text = ""
    for i, piece in enumerate(pieces):
        text += scanner.feed(piece, final=i == len(pieces) - 1)
        if scanner.matched:
            break
    return text, scanner.matched


def test_stop_sequence_split_across_deltas() -> None:
    assert _run(["END"], ["abc E", "N", "D tail"]) == ("abc ", "END")
    assert _run(["xyz", "b"], ["aab", "xyz"]) == ("aa", "b")  # the earliest match wins


def test_held_back_text_is_released() -> None:
    assert _run(["END"], ["abc E", "x", " more"]) == ("abc Ex more", None)
    assert _run(["END"], ["abc EN"]) == ("abc EN", None)  # the end of the answer flushes it


def test_billing_line_dropped_unless_kept() -> None:
    line = "x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch=36ee5;"
    request = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
        "system": [{"type": "text", "text": line}, {"type": "text", "text": "You are Claude Code."}]})
    assert request.to_task().messages[0].text == "You are Claude Code."
    assert line in request.to_task(keep_billing_line=True).messages[0].text
    inline = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "system": line + "\nRules.",
                                             "messages": [{"role": "user", "content": "hi"}]})
    assert inline.to_task().messages[0].text == "Rules."


def test_blocks_into_messages() -> None:
    request = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny"}]},
                                     {"type": "text", "text": "thanks"}]}]})
    messages = request.to_task().messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[1].tool_calls[0].arguments == '{"c": 1}'
    assert messages[2].tool_call_id == "toolu_1" and messages[2].name == "w" and messages[2].text == "sunny"
    with pytest.raises(BadRequest):
        MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]}).to_task()


def test_alias_resolution() -> None:
    aliases = {"claude-*": "a", "claude-opus-*": "b", "gpt-5": "c"}
    assert resolve_alias("claude-opus-4", aliases) == "b"  # the more specific pattern
    assert resolve_alias("claude-haiku", aliases) == "a"
    assert resolve_alias("gpt-5", aliases) == "c" and resolve_alias("gpt-5-codex", aliases) is None
    assert resolve_alias("anything", {"*": "d"}) == "d"
