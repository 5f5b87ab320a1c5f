"""LocalAI's function block, unit by unit: the reply parser, the grammar, the plan.

The parsing cases are LocalAI's own (its pkg/functions/parse_test.go at commit
82c191afadf5f005281e798ccfa0ffd0d5805030): the same model outputs and configs, the
same expected calls, written here as our own tests. Cases of LocalAI's PEG/XML
presets that lokal does not implement (GLM 4.5, Kimi K2, MiniMax, Apriel ...) are
not ported.
"""

from __future__ import annotations

import json

import pytest

from lokal.models.localai_functions.config import FunctionConfig
from lokal.models.localai_functions.grammar import build_grammar
from lokal.models.localai_functions.planning import LocalAIPlan, plan
from lokal.models.localai_functions.replies import (Call, ReplyReader, ReplyShaping, capture_text, json_objects,
                                                    parse_calls, read_reply)
from lokal.tasks import ChatTask, Message, Tool


def cfg(**fields: object) -> FunctionConfig:
    return FunctionConfig.model_validate(fields)


def calls(text: str, **fields: object) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in parse_calls(text, cfg(**fields))]


# Ported from LocalAI's parse_test.go ------------------------------------------------------

def test_json_object_call() -> None:
    assert calls('{"name": "add", "arguments": {"x": 5, "y": 3}}') == [("add", '{"x":5,"y":3}')]


def test_response_regex_with_named_groups() -> None:
    regex = r"(?P<name>\w+)\s*\((?P<arguments>.*)\)"
    assert calls('add({"x":5,"y":3})', response_regex=[regex]) == [("add", '{"x":5,"y":3}')]


def test_response_regex_with_a_custom_name_key() -> None:
    regex = r"(?P<function>\w+)\s*\((?P<arguments>.*)\)"
    assert calls('add({"x":5,"y":3})', response_regex=[regex], function_name_key="function") == \
        [("add", '{"x":5,"y":3}')]


@pytest.mark.parametrize("text", ["", "invalid input"])
def test_no_calls_in_empty_or_plain_text(text: str) -> None:
    assert calls(text) == []


def test_an_array_of_calls() -> None:
    text = '[{"name": "add", "arguments": {"x": 5, "y": 3}}, {"name": "subtract", "arguments": {"x": 10, "y": 7}}]'
    assert calls(text) == [("add", '{"x":5,"y":3}'), ("subtract", '{"x":10,"y":7}')]


def test_name_key_function() -> None:
    assert calls('{"function": "add", "arguments": {"x": 5, "y": 3}}', function_name_key="function") == \
        [("add", '{"x":5,"y":3}')]


def test_json_regex_match_picks_the_json() -> None:
    text = '\n<tool_call>\n{"name": "add", "arguments": {"x": 5, "y": 3}}\n</tool_call>'
    assert calls(text, json_regex_match=[r"(?s)<tool_call>(.*?)</tool_call>"]) == [("add", '{"x":5,"y":3}')]
    text = '\n{"name": "add", "arguments": {"x": 5, "y": 3}}\n</tool_call>'
    assert calls(text, json_regex_match=[r"(?s)(.*?)</tool_call>"]) == [("add", '{"x":5,"y":3}')]


def test_valid_json_around_invalid_text() -> None:
    text = '{"name": "add", "arguments": {"x": 5, "y": 3}} invalid {"name": "add", "arguments": {"x": 5, "y": 3}}'
    assert calls(text) == [("add", '{"x":5,"y":3}')] * 2


CLEAN = [{"key": r"(?s)^[^{\[]*", "value": ""}, {"key": r"(?s)[^}\]]*$", "value": ""}]


def test_replace_function_results_trims_text_around_the_json() -> None:
    text = '\nSome text before the JSON\n{"name": "add", "arguments": {"x": 5, "y": 3}}\nSome text after the JSON\n'
    assert calls(text, replace_function_results=CLEAN) == [("add", '{"x":5,"y":3}')]
    text = ('\nSome text before the JSON\n[{"name": "add", "arguments": {"x": 5, "y": 3}}, '
            '{"name": "subtract", "arguments": {"x": 10, "y": 7}}]\nSome text after the JSON\n')
    assert calls(text, replace_function_results=CLEAN) == [("add", '{"x":5,"y":3}'), ("subtract", '{"x":10,"y":7}')]


@pytest.mark.parametrize("wrapped", [False, True])
def test_replacements_turn_single_quotes_into_json(wrapped: bool) -> None:
    body = "{'name': '\"add\"', 'arguments': {'x': 5, 'z': '\"v\"', 'y': 'v\"value\"'}}"
    if wrapped:
        body = f"<tool_call>{body}</tool_call>"
    text = f"\nSome text before the JSON\n{body}\nSome text after the JSON\n"
    rules = CLEAN + [
        {"key": r"'([^']*?)'", "value": "_DQUOTE_${1}_DQUOTE_"},
        {"key": r'\\"', "value": "__TEMP_QUOTE__"},
        {"key": '"', "value": '\\"'},
        {"key": r"\'", "value": "'"},
        {"key": "_DQUOTE_", "value": '"'},
        {"key": "__TEMP_QUOTE__", "value": '"'},
    ]
    assert calls(text, json_regex_match=[r"(?s)<tool_call>(.*?)</tool_call>"], replace_function_results=rules) == \
        [('"add"', '{"x":5,"y":"v\\"value\\"","z":"\\"v\\""}')]


def test_json_regex_match_repeated() -> None:
    text = ('\nSome text before the JSON\n<tool_call>{"name": "add", "arguments": {"x": 5, "y": 3}}</tool_call>\n'
            '<tool_call>{"name": "subtract", "arguments": {"x": 10, "y": 7}}</tool_call>\nSome text after the JSON\n')
    assert calls(text, json_regex_match=[r"(?s)<tool_call>(.*?)</tool_call>"]) == \
        [("add", '{"x":5,"y":3}'), ("subtract", '{"x":10,"y":7}')]


def test_capture_llm_results() -> None:
    text = ('\n\t\tSome text before the JSON\n<sketchpad>\nroses are red\n</sketchpad>\n\t\t<tool_call>{"name": '
            '"subtract", "arguments": {"x": 10, "y": 7}}</tool_call>\n\t\tSome text after the JSON\n\t\t')
    assert capture_text(text, cfg(capture_llm_results=[r"(?s)<sketchpad>(.*?)</sketchpad>"])) == "roses are red"
    plain = text.replace("<sketchpad>\nroses are red\n</sketchpad>\n", "")
    assert capture_text(plain, cfg(capture_llm_results=[r"(?s)<sketchpad>(.*?)</sketchpad>"])) == ""


def test_json_reader_skips_what_is_not_json() -> None:
    assert json_objects('{"key1": "value1"} {"key2": "value2"}') == [{"key1": "value1"}, {"key2": "value2"}]
    assert json_objects('[{"key1": "value1"}]') == [{"key1": "value1"}]
    assert json_objects("invalid json") == []
    assert json_objects('{"key1": "value1"} invalid {"key2": "value2"}') == [{"key1": "value1"}, {"key2": "value2"}]


def test_qwen3_coder_markup() -> None:
    text = "<tool_call>\n<function=glob>\n<parameter=pattern>\n**/package.json\n</parameter>\n</function>\n</tool_call>"
    assert calls(text) == [("glob", '{"pattern":"**/package.json"}')]
    two = ("<tool_call>\n<function=add>\n<parameter=x>\n5\n</parameter>\n<parameter=y>\n3\n</parameter>\n</function>\n"
           "</tool_call>\n<tool_call>\n<function=subtract>\n<parameter=x>\n10\n</parameter>\n<parameter=y>\n7\n"
           "</parameter>\n</function>\n</tool_call>")
    assert calls(two) == [("add", '{"x":5,"y":3}'), ("subtract", '{"x":10,"y":7}')]
    mixed = f"A message from the LLM\n{text}\nSome text after the tool call"
    assert calls(mixed) == [("glob", '{"pattern":"**/package.json"}')]


def test_functionary_markup() -> None:
    assert calls('<function=add>{"x": 5, "y": 3}</function>') == [("add", '{"x":5,"y":3}')]


def test_automatic_fallback_wraps_a_string_argument() -> None:
    text = '{"name": "search", "arguments": "cats"}'
    assert calls(text, automatic_tool_parsing_fallback=True) == [("search", '{"query":"cats"}')]
    assert calls(text) == [("search", "cats")]


# The gallery's own function setups ---------------------------------------------------------

LLAMA31 = {"disable_no_action": True, "grammar": {"disable": True},
           "response_regex": [r"<function=(?P<name>\w+)>(?P<arguments>.*)</function>"]}
MISTRAL = {"grammar": {"disable": True, "parallel_calls": True},
           "json_regex_match": [r"(?s)\[TOOL\_CALLS\](.*)"],
           "replace_function_results": CLEAN}
PYTHONIC = {"grammar": {"disable": True},
            "response_regex": [r"\[(?P<name>\w+)\((?P<arguments>.*)\)\]"],
            "argument_regex": [r"(?P<key>[^ '\(=,]+)[='\"]+(?P<value>[^=,\"']+)['\"]?"]}


def test_llama31_function_tags() -> None:
    assert calls('<function=get_weather>{"city": "Paris"}</function>', **LLAMA31) == \
        [("get_weather", '{"city": "Paris"}')]


def test_mistral_tool_calls_array() -> None:
    text = '[TOOL_CALLS][{"name": "a", "arguments": {"q": 1}}, {"name": "b", "arguments": {}}]'
    assert calls(text, **MISTRAL) == [("a", '{"q":1}'), ("b", "{}")]


def test_pythonic_calls_with_argument_regex() -> None:
    assert calls("[get_weather(city='Paris', unit='c')]", **PYTHONIC) == \
        [("get_weather", '{"city":"Paris","unit":"c"}')]


def test_bad_regexes_are_config_errors() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        cfg(response_regex=["(unclosed"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        cfg(replace_llm_results=[{"key": "(?<=lookbehind)x", "value": ""}])  # RE2 has no lookbehind


# The plan and the reply -----------------------------------------------------------------------

WEATHER = Tool("get_weather", "Weather for a city",
               {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


class _Config:
    def __init__(self, function: dict | None, template_function: str | None = "T") -> None:
        self.function = FunctionConfig.model_validate(function) if function is not None else None

        class Template:
            function = template_function
        self.template = Template()


def _task(**kw: object) -> ChatTask:
    return ChatTask(model="m", messages=[Message("user", "hi")], tools=[WEATHER], **kw)  # type: ignore[arg-type]


def test_plan_adds_the_no_action_function_and_a_grammar() -> None:
    p = plan(_Config({}), _task(), renders_go=True)
    assert p is not None and [f["Name"] for f in p.functions] == ["get_weather"]
    assert p.grammar is not None and '"\\"answer\\""' in p.grammar and '"\\"get_weather\\""' in p.grammar
    assert "root ::= realvalue" in p.grammar


def test_plan_without_no_action_or_grammar() -> None:
    p = plan(_Config({"disable_no_action": True}), _task(), renders_go=True)
    assert p is not None and p.grammar is not None and "answer" not in p.grammar
    p = plan(_Config({"grammar": {"disable": True}}), _task(), renders_go=True)
    assert p is not None and p.grammar is None


def test_lokal_keeps_its_own_envelope_for_configs_that_say_nothing() -> None:
    assert plan(_Config(None, None), _task(), renders_go=True) is None
    assert plan(_Config(None, None), _task(), renders_go=False) is None


def test_native_templates_get_only_the_fallback() -> None:
    assert plan(_Config({"grammar": {"disable": True}}), _task(), renders_go=False) is None
    p = plan(_Config({"automatic_tool_parsing_fallback": True}), _task(), renders_go=False)
    assert p is not None and p.native and p.grammar is None


@pytest.mark.parametrize("options, root", [
    ({"parallel_calls": True}, "root ::= arr | realvalue"),
    ({"mixed_mode": True}, "root ::= mixedstring | realvalue"),
    ({"mixed_mode": True, "no_mixed_free_string": True}, "root ::= freestring | realvalue"),
    ({"prefix": "<tool>"}, 'root ::= "<tool>" (realvalue)'),
    ({"prefix": "<tool>", "mixed_mode": True}, 'root ::= ( "<tool>" realvalue | mixedstring )'),
])
def test_grammar_options_shape_the_root(options: dict, root: str) -> None:
    grammar = build_grammar([{"name": "f", "parameters": {"properties": {"a": {"type": "integer"}}}}],
                            cfg(grammar=options))
    assert root in grammar.splitlines()


def test_parallel_newlines_and_strings_after_json() -> None:
    functions = [{"name": "f", "parameters": {}}]
    assert 'arr ::= "[\\n" ( realvalue (",\\n" realvalue)* )? "]"' in build_grammar(
        functions, cfg(grammar={"parallel_calls": True})).splitlines()
    assert 'arr ::= "[" ( realvalue ("," realvalue)* )? "]"' in build_grammar(
        functions, cfg(grammar={"parallel_calls": True, "disable_parallel_new_lines": True})).splitlines()
    grammar = build_grammar(functions, cfg(grammar={"mixed_mode": True, "expect_strings_after_json": True}))
    assert "mixedstring ::= freestring | (freestring realvalue freestring)* | realvalue" in grammar.splitlines()


def test_properties_order_and_keys() -> None:
    grammar = build_grammar([{"name": "f", "parameters": {}}],
                            cfg(function_name_key="function", grammar={"properties_order": "arguments,function"}))
    line = next(x for x in grammar.splitlines() if x.startswith("realvalue ::="))
    assert line.index('"\\"arguments\\""') < line.index('"\\"function\\""')


def test_no_action_reply_is_text_and_a_call_is_a_call() -> None:
    p = LocalAIPlan(cfg(), [], "g")
    assert read_reply('{"name": "answer", "arguments": {"message": "Hi!"}}', p).text == "Hi!"
    out = read_reply('{"name": "get_weather", "arguments": {"city": "Paris"}}', p)
    assert out.calls == [Call("get_weather", '{"city":"Paris"}')] and out.text == ""
    assert read_reply("just words", p).text == "just words"


def test_replace_and_capture_llm_results() -> None:
    p = LocalAIPlan(cfg(replace_llm_results=[{"key": r"(?s)<scratchpad>(.*?)</scratchpad>", "value": ""}],
                        capture_llm_results=[r"(?s)<scratchpad>(.*?)</scratchpad>"]), [], None)
    out = read_reply('<scratchpad>thinking</scratchpad>{"name": "f", "arguments": {}}', p)
    assert out.text == "thinking" and out.calls == [Call("f", "{}")]


def test_reader_holds_text_until_the_end_and_one_call_without_parallel() -> None:
    reader = ReplyReader(ReplyShaping(LocalAIPlan(cfg(), [], None, parallel=False)))
    assert reader.feed('[{"name": "a", "arguments": {}},', False) == ("", None)
    text, deltas = reader.feed(' {"name": "b", "arguments": {}}]', True)
    assert text == "" and deltas is not None
    assert [(d.position, d.name) for d in deltas if d.name] == [(0, "a")]
    assert json.loads("".join(d.arguments for d in deltas)) == {}


def test_llama31_schema_type_writes_function_tags() -> None:
    grammar = build_grammar([{"name": "get_weather", "parameters": {"properties": {"city": {"type": "string"}}}}],
                            cfg(grammar={"schema_type": "llama3.1"}))
    line = next(x for x in grammar.splitlines() if x.startswith("realvalue ::="))
    assert line.startswith('realvalue ::= "<function=" "get_weather" ">" ') and line.endswith('"</function>"')
    assert calls('<function=get_weather>{"city": "Oslo"}</function>') == [("get_weather", '{"city":"Oslo"}')]


def test_required_tool_choice_leaves_no_reply_in_the_grammar() -> None:
    p = plan(_Config({}), _task(tool_choice="required"), renders_go=True)
    assert p is not None and p.grammar is not None and "answer" not in p.grammar and "get_weather" in p.grammar
