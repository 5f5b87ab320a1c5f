"""Tests for the sandboxed Go text/template renderer (lokal.templates)."""

from __future__ import annotations

import pickle

import pytest

from lokal.templates import (
    MAX_NESTING,
    MAX_RANGE_ITEMS,
    Template,
    TemplateError,
    parse,
)


def render(source: str, data: object = None, name: str = "t.tmpl") -> str:
    return parse(source, name).render({} if data is None else data)  # type: ignore[arg-type]


def error_of(source: str, data: object = None, name: str = "t.tmpl") -> TemplateError:
    with pytest.raises(TemplateError) as info:
        render(source, data, name)
    return info.value


# ---------------------------------------------------------------------------
# Real LocalAI templates
# ---------------------------------------------------------------------------

GPT4ALL = (
    "The prompt below is a question to answer, a task to complete, or a conversation "
    "to respond to; decide which and write an appropriate response.\n"
    "### Prompt:\n"
    "{{.Input}}\n"
    "### Response:\n"
)

CHAT_MESSAGE = (
    '<|im_start|>{{if eq .RoleName "assistant"}}assistant{{else if eq .RoleName "system"}}system'
    '{{else if eq .RoleName "tool"}}tool{{else if eq .RoleName "user"}}user{{end}}\n'
    "{{- if .Content}}\n"
    "{{.Content }}\n"
    "{{- end }}<|im_end|>"
)

# From LocalAI's pkg/templates tests (ChatML with tool calls, and llama3).
CHATML_TOOLS = (
    '<|im_start|>{{if eq .RoleName "assistant"}}assistant{{else if eq .RoleName "system"}}system'
    '{{else if eq .RoleName "tool"}}tool{{else if eq .RoleName "user"}}user{{end}}\n'
    "{{- if .FunctionCall }}\n<tool_call>\n"
    '{{- else if eq .RoleName "tool" }}\n<tool_response>\n'
    "{{- end }}\n"
    "{{- if .Content}}\n{{.Content }}\n{{- end }}\n"
    "{{- if .FunctionCall}}\n{{toJson .FunctionCall}}\n{{- end }}\n"
    "{{- if .FunctionCall }}\n</tool_call>\n"
    '{{- else if eq .RoleName "tool" }}\n</tool_response>\n'
    "{{- end }}<|im_end|>"
)

LLAMA3 = (
    '<|start_header_id|>{{if eq .RoleName "assistant"}}assistant{{else if eq .RoleName "system"}}system'
    '{{else if eq .RoleName "tool"}}tool{{else if eq .RoleName "user"}}user{{end}}<|end_header_id|>\n\n'
    "{{ if .FunctionCall -}}\nFunction call:\n"
    '{{ else if eq .RoleName "tool" -}}\nFunction response:\n'
    "{{ end -}}\n"
    "{{ if .Content -}}\n{{.Content -}}\n"
    "{{ else if .FunctionCall -}}\n{{ toJson .FunctionCall -}}\n"
    "{{ end -}}\n<|eot_id|>"
)

GALAXY = "A long time ago in a galaxy far, far away..."


def test_gpt4all_template() -> None:
    tpl = parse(GPT4ALL, "gpt4all.tmpl")
    assert tpl.name == "gpt4all.tmpl"
    assert tpl.source == GPT4ALL
    assert tpl.render({"Input": "hi"}) == (
        "The prompt below is a question to answer, a task to complete, or a conversation "
        "to respond to; decide which and write an appropriate response.\n"
        "### Prompt:\nhi\n### Response:\n"
    )


def test_completion_template() -> None:
    tpl = parse("{{.Input}}", "completion.tmpl")
    assert tpl.render({"Input": "Once upon a time"}) == "Once upon a time"
    assert tpl.render({"Input": ""}) == ""
    # Template objects are reusable and hold no per-render state.
    assert tpl.render({"Input": "again"}) == "again"


def test_template_class_is_constructible_directly() -> None:
    tpl = Template("[{{.Input}}]", "x.tmpl")
    assert tpl.render({"Input": "y"}) == "[y]"
    assert tpl.name == "x.tmpl"


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("user", "<|im_start|>user\nhello there<|im_end|>"),
        ("assistant", "<|im_start|>assistant\nhello there<|im_end|>"),
        ("system", "<|im_start|>system\nhello there<|im_end|>"),
        ("tool", "<|im_start|>tool\nhello there<|im_end|>"),
        ("function", "<|im_start|>\nhello there<|im_end|>"),
    ],
)
def test_chat_message_template_per_role(role: str, expected: str) -> None:
    assert render(CHAT_MESSAGE, {"RoleName": role, "Content": "hello there"}) == expected


def test_chat_message_template_without_content() -> None:
    assert render(CHAT_MESSAGE, {"RoleName": "assistant", "Content": ""}) == "<|im_start|>assistant<|im_end|>"
    assert render(CHAT_MESSAGE, {"RoleName": "user"}) == "<|im_start|>user<|im_end|>"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"RoleName": "user", "Content": GALAXY}, f"<|im_start|>user\n{GALAXY}<|im_end|>"),
        ({"RoleName": "assistant", "Content": GALAXY}, f"<|im_start|>assistant\n{GALAXY}<|im_end|>"),
        (
            {"RoleName": "assistant", "Content": "", "FunctionCall": {"function": "test"}},
            '<|im_start|>assistant\n<tool_call>\n{"function":"test"}\n</tool_call><|im_end|>',
        ),
        (
            {"RoleName": "tool", "Content": "Response from tool"},
            "<|im_start|>tool\n<tool_response>\nResponse from tool\n</tool_response><|im_end|>",
        ),
    ],
)
def test_localai_chatml_tool_template(data: dict, expected: str) -> None:
    assert render(CHATML_TOOLS, data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"RoleName": "user", "Content": GALAXY},
         f"<|start_header_id|>user<|end_header_id|>\n\n{GALAXY}<|eot_id|>"),
        ({"RoleName": "assistant", "Content": GALAXY},
         f"<|start_header_id|>assistant<|end_header_id|>\n\n{GALAXY}<|eot_id|>"),
        ({"RoleName": "assistant", "Content": "", "FunctionCall": {"function": "test"}},
         '<|start_header_id|>assistant<|end_header_id|>\n\nFunction call:\n{"function":"test"}<|eot_id|>'),
        ({"RoleName": "tool", "Content": "Response from tool"},
         "<|start_header_id|>tool<|end_header_id|>\n\nFunction response:\nResponse from tool<|eot_id|>"),
    ],
)
def test_localai_llama3_template(data: dict, expected: str) -> None:
    assert render(LLAMA3, data) == expected


def test_chat_template_over_messages() -> None:
    src = (
        "{{- range $i, $m := .Messages }}"
        "{{ if $i }}\n{{ end }}{{ $m.Role }}: {{ $m.Content | trim }}"
        "{{- end }}\nassistant:"
    )
    data = {"Messages": [{"Role": "system", "Content": " be brief "}, {"Role": "user", "Content": "hi"}]}
    assert render(src, data) == "system: be brief\nuser: hi\nassistant:"


# ---------------------------------------------------------------------------
# Text, trim markers, comments
# ---------------------------------------------------------------------------


def test_plain_text_and_braces() -> None:
    assert render("no actions } here {") == "no actions } here {"
    assert render('{{"{{"}}x{{"}}"}}') == "{{x}}"
    assert render("") == ""


def test_trim_markers() -> None:
    data = {"X": "v"}
    assert render("a  \n\t {{- .X -}} \n\n b", data) == "avb"
    assert render("a  {{- .X }}  b", data) == "av  b"
    assert render("a  {{ .X -}}  b", data) == "a  vb"
    assert render("a\n{{- .X}}", data) == "av"
    # Lenient form without the space.
    assert render("a  {{-.X-}}  b", data) == "avb"
    # "{{-3}}" is the number -3, not a trim marker (as in Go).
    assert render("a {{-3}}") == "a -3"
    assert render("a {{- -3 }}") == "a-3"


def test_comments() -> None:
    assert render("a{{/* a comment */}}b") == "ab"
    assert render("a {{- /* multi\nline */ -}} b") == "ab"
    assert render("a\n{{/* c */ -}}\nb") == "a\nb"
    assert render("x{{/* {{.Nope}} }} */}}y") == "xy"


# ---------------------------------------------------------------------------
# Fields, variables, literals, output formatting
# ---------------------------------------------------------------------------


def test_fields_and_dot() -> None:
    data = {"A": {"B": {"C": "deep"}}, "S": "str"}
    assert render("{{.A.B.C}}", data) == "deep"
    assert render("{{with .A}}{{.B.C}}{{end}}", data) == "deep"
    assert render("{{.}}", "just a string") == "just a string"
    assert render("{{with .A.B}}{{$.S}}{{$.A.B.C}}{{end}}", data) == "strdeep"
    assert render("{{(.A).B.C}}", data) == "deep"


def test_missing_keys_render_empty() -> None:
    assert render("[{{.Missing}}]", {"Other": 1}) == "[]"
    assert render("[{{.Missing.Deeper.Still}}]", {}) == "[]"
    assert render("[{{if .Missing}}yes{{else}}no{{end}}]", {}) == "[no]"
    assert render("[{{.A}}]", {"A": None}) == "[]"


def test_literals() -> None:
    assert render(r'{{"tab\there\nquote\" backslash\\"}}') == 'tab\there\nquote" backslash\\'
    assert render(r'{{"\x41\u00e9\101"}}') == "AéA"
    assert render("{{`raw \\n {{ }} stays`}}") == "raw \\n {{ }} stays"
    assert render("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 1_000 }} {{ 010 }}") == "42 -7 31 1000 8"
    assert render("{{ 1.5 }} {{ .25 }} {{ 2.0 }} {{ 1e3 }}") == "1.5 0.25 2 1000"
    assert render("{{ true }} {{ false }} {{ 'a' }}") == "true false 97"
    assert render("{{ print nil }}") == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s", "s"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (0, "0"),
        (-12, "-12"),
        (0.5, "0.5"),
        (2.0, "2"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1e-5, "1e-05"),
        (float("inf"), "+Inf"),
        ([1, "a", None, True], "[1 a <nil> true]"),
        ({"b": 2, "a": [1, 2]}, "map[a:[1 2] b:2]"),
        ([], "[]"),
    ],
)
def test_value_formatting(value: object, expected: str) -> None:
    assert render("{{.V}}", {"V": value}) == expected


def test_variables_and_scoping() -> None:
    assert render('{{$x := "a"}}{{$x}}') == "a"
    # Declaring produces no output; := in a block shadows until {{end}}.
    assert render('{{$x := "outer"}}{{if true}}{{$x := "inner"}}{{$x}}{{end}}-{{$x}}') == "inner-outer"
    # = assigns to the existing variable, visible after the block.
    assert render('{{$x := "a"}}{{if true}}{{$x = "b"}}{{end}}{{$x}}') == "b"
    # Variables declared in an if condition are visible in every branch.
    assert render('{{if $v := .A}}{{$v}}{{else}}none:{{$v}}{{end}}', {"A": 0}) == "none:0"
    assert render('{{if $v := .A}}{{$v}}{{end}}', {"A": "set"}) == "set"
    # $ is always the root data.
    assert render("{{range .L}}{{$.P}}{{.}} {{end}}", {"L": [1, 2], "P": "#"}) == "#1 #2 "
    # Variable field chains.
    assert render("{{$u := .U}}{{$u.Name}}", {"U": {"Name": "ann"}}) == "ann"


def test_variable_out_of_scope_is_a_parse_error() -> None:
    err = error_of("{{if true}}{{$y := 1}}{{end}}\n{{$y}}")
    assert err.line == 2
    assert 'undefined variable "$y"' in str(err)
    err = error_of("{{$z = 1}}")
    assert 'undefined variable "$z"' in str(err)
    err = error_of("{{range $i, $e := .L}}{{end}}{{$e}}")
    assert 'undefined variable "$e"' in str(err)


# ---------------------------------------------------------------------------
# Functions and pipelines
# ---------------------------------------------------------------------------


def test_and_or_not_ne() -> None:
    assert render("{{and 1 0 2}}") == "0"
    assert render('{{and 1 "x" 2}}') == "2"
    assert render('{{or 0 "" "first" "second"}}') == "first"
    assert render('{{or 0 ""}}') == ""
    assert render("{{or 0 false}}") == "false"
    assert render("{{not 0}} {{not 1}} {{not \"\"}} {{not .L}}", {"L": []}) == "true false true true"
    assert render('{{ne 1 2}} {{ne "a" "a"}}') == "true false"
    # and/or short-circuit: the erroring index is never evaluated.
    assert render("{{or 1 (index .L 9)}}", {"L": []}) == "1"
    assert render("{{and 0 (index .L 9)}}", {"L": []}) == "0"
    # In conditions.
    assert render('{{if and .A (not .B)}}yes{{else}}no{{end}}', {"A": 1, "B": 0}) == "yes"
    assert render('{{if or .A .B}}yes{{else}}no{{end}}', {}) == "no"


def test_comparisons() -> None:
    assert render('{{eq .R "user" "system"}}', {"R": "system"}) == "true"
    assert render('{{eq .R "user" "system"}}', {"R": "tool"}) == "false"
    assert render("{{eq 1 1.0}} {{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 3 2}}") == "true true true false true"
    assert render('{{lt "a" "b"}}') == "true"
    assert render("{{eq .Missing nil}} {{eq .Missing \"x\"}}", {}) == "true false"
    assert "incompatible types for comparison" in str(error_of('{{eq 1 "1"}}'))
    assert "incompatible types for comparison" in str(error_of('{{lt 1 "1"}}'))
    assert "invalid type for comparison" in str(error_of("{{lt true false}}"))


def test_len_and_index() -> None:
    data = {"L": ["a", "b", "c"], "M": {"k": {"x": [10, 20]}}, "S": "héllo"}
    assert render("{{len .L}} {{len .M}} {{len .S}}", data) == "3 1 6"  # Go's len counts bytes
    assert render("{{index .L 1}}", data) == "b"
    assert render('{{index .M "k" "x" 1}}', data) == "20"
    assert render('[{{index .M "nope"}}]', data) == "[]"


def test_print_functions() -> None:
    assert render('{{print "a" 1 2 "b"}}') == "a1 2b"
    assert render('{{println "a" 1}}') == "a 1\n"
    assert render('{{printf "%s=%d (%v) %q %5.2f|%-3s|%03d %t %x %%" "n" 7 1.5 "q\\"" 3.14159 "x" 5 true 255}}') == (
        'n=7 (1.5) "q\\"" ' + " 3.14|x  |005 true ff %"
    )
    assert render('{{printf "%v %v" .L .M}}', {"L": [1, 2], "M": {"a": True}}) == "[1 2] map[a:true]"
    assert render('{{printf "%d %s"  1}}') == "1 %!s(MISSING)"
    assert render('{{printf "%d" "x"}}') == "%!d(string=x)"


def test_pipelines() -> None:
    data = {"Input": "  Hello World \n"}
    assert render("{{ .Input | trim }}", data) == "Hello World"
    assert render("{{ .Input | trim | upper }}", data) == "HELLO WORLD"
    assert render("{{ .Input | trim | lower | printf \"<%s>\" }}", data) == "<hello world>"
    # The piped value becomes the last argument.
    assert render('{{ "b" | printf "%s-%s" "a" }}') == "a-b"
    assert render('{{ if .Input | trim | eq "Hello World" }}same{{ end }}', data) == "same"
    assert render('{{ $t := .Input | trim }}[{{ $t }}]', data) == "[Hello World]"
    assert render('{{ (printf "%s!" "hi") | upper }}') == "HI!"


def test_to_json() -> None:
    data = {"F": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 3}}}
    assert render("{{toJson .F}}", data) == '{"name":"get_weather","arguments":{"city":"Zürich","days":3}}'
    assert render("{{toJson .L}}", {"L": [1, None, True, "a\"b"]}) == '[1,null,true,"a\\"b"]'
    assert render("{{ .F | toJson }}", {"F": "s"}) == '"s"'


def test_sprig_string_functions() -> None:
    data = {"S": "<think>body</think>", "L": ["a", "b", "c"], "N": ["x", 1, None]}
    assert render('{{contains "body" .S}} {{contains "nope" .S}}', data) == "true false"
    assert render('{{hasPrefix "<think>" .S}} {{hasSuffix "</think>" .S}} {{hasPrefix "x" .S}}', data) == (
        "true true false"
    )
    assert render('{{ .S | hasPrefix "<think>" }}', data) == "true"
    assert render('{{replace "think" "t" .S}}', data) == "<t>body</t>"
    assert render('{{join ", " .L}}|{{join "-" .N}}', data) == "a, b, c|x-1"
    assert render('{{trimPrefix "<think>" .S | trimSuffix "</think>"}}', data) == "body"
    assert render('{{default "anon" .User}} {{default "anon" "bob"}}', {}) == "anon bob"
    assert render("{{empty .L}} {{empty .Missing}}", data) == "false true"


# ---------------------------------------------------------------------------
# Control structures
# ---------------------------------------------------------------------------


def test_if_else_chain() -> None:
    src = '{{if eq .N 1}}one{{else if eq .N 2}}two{{else}}many{{end}}'
    assert [render(src, {"N": n}) for n in (1, 2, 3)] == ["one", "two", "many"]


@pytest.mark.parametrize(
    ("value", "truthy"),
    [(False, False), (0, False), (0.0, False), (None, False), ("", False), ([], False), ({}, False),
     (True, True), (1, True), (-0.5, True), ("0", True), ([0], True), ({"a": 0}, True)],
)
def test_truthiness(value: object, truthy: bool) -> None:
    assert render("{{if .V}}T{{else}}F{{end}}", {"V": value}) == ("T" if truthy else "F")


def test_range() -> None:
    data = {"L": ["a", "b"], "M": {"z": 1, "a": 2}, "E": []}
    assert render("{{range .L}}<{{.}}>{{end}}", data) == "<a><b>"
    assert render("{{range $i, $e := .L}}{{$i}}={{$e}};{{end}}", data) == "0=a;1=b;"
    assert render("{{range $e := .L}}{{$e}}{{end}}", data) == "ab"
    assert render("{{range $k, $v := .M}}{{$k}}:{{$v}} {{end}}", data) == "a:2 z:1 "
    assert render("{{range .E}}x{{else}}empty{{end}}", data) == "empty"
    assert render("{{range .Missing}}x{{else}}none{{end}}", data) == "none"
    assert render("{{range 3}}{{.}}{{end}}") == "012"
    # $i/$e are reset each iteration; variables set inside do not leak.
    assert render('{{range .L}}{{$x := .}}{{end}}{{range .L}}{{.}}{{end}}', data) == "ab"


def test_range_break_continue() -> None:
    src = "{{range .}}{{if eq . 2}}{{continue}}{{end}}{{if eq . 4}}{{break}}{{end}}{{.}}{{end}}"
    assert render(src, [1, 2, 3, 4, 5]) == "13"
    nested = "{{range .}}{{range .}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}};{{end}}"
    assert render(nested, [[1, 2, 3], [4]]) == "1;4;"


def test_range_with_assignment_accumulates() -> None:
    src = '{{$last := ""}}{{range .}}{{$last = .}}{{end}}{{$last}}'
    assert render(src, ["a", "b", "c"]) == "c"


def test_range_over_string_is_an_error() -> None:
    err = error_of("x\n{{range .S}}{{end}}", {"S": "abc"})
    assert err.line == 2
    assert "range can't iterate over abc" in str(err)


def test_with() -> None:
    data = {"U": {"Name": "ann"}, "E": ""}
    assert render("{{with .U}}{{.Name}}{{else}}anon{{end}}", data) == "ann"
    assert render("{{with .E}}{{.}}{{else}}anon:{{.U.Name}}{{end}}", data) == "anon:ann"
    assert render("{{with .E}}x{{else with .U}}{{.Name}}{{end}}", data) == "ann"
    assert render("{{with $n := .U.Name}}{{$n}}{{.}}{{end}}", data) == "annann"


# ---------------------------------------------------------------------------
# Errors (format: "<name>:<line>: <detail>")
# ---------------------------------------------------------------------------


def test_error_format_and_attributes() -> None:
    err = error_of("line1\nline2\n{{end}}", name="gpt4all.tmpl")
    assert str(err) == "gpt4all.tmpl:3: unexpected {{end}}"
    assert (err.name, err.line, err.detail) == ("gpt4all.tmpl", 3, "unexpected {{end}}")
    assert isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.line == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a\nb\n{{if .A}}\nno end here\n", "t.tmpl:3: unclosed {{if}}: missing {{end}}"),
        ("{{range .L}}\n{{with .X}}\n{{end}}", "t.tmpl:1: unclosed {{range}}: missing {{end}}"),
        ("a\n{{with .X}}{{if .Y}}{{end}}", "t.tmpl:2: unclosed {{with}}: missing {{end}}"),
        ("ok\n\n\n{{ .Input ", "t.tmpl:4: unclosed action"),
        ("ok\n{{ .Input }\n}", "t.tmpl:2: bad character '}' in action"),
        ("{{if .A}}{{end}}\n{{end}}", "t.tmpl:2: unexpected {{end}}"),
        ("x\n{{else}}", "t.tmpl:2: unexpected {{else}}"),
        ("{{if .A}}\n{{else}}\n{{else}}{{end}}", "t.tmpl:3: unexpected {{else}} after {{else}}"),
        ("\n{{ nosuchfunc .A }}", 't.tmpl:2: function "nosuchfunc" not defined'),
        ("{{ .A # }}", "t.tmpl:1: bad character '#' in action"),
        ('\n\n{{ "unterminated }}', "t.tmpl:3: unterminated quoted string"),
        ("{{ 12abc }}", "t.tmpl:1: bad number syntax: '12abc'"),
        ("{{ }}", "t.tmpl:1: missing value for command"),
        ("{{ .A ) }}", "t.tmpl:1: unexpected ')' in command"),
        ("{{ (.A }}", "t.tmpl:1: unclosed left paren"),
        ("{{ print if }}", "t.tmpl:1: unexpected keyword 'if' in command"),
        ("{{ nil }}", "t.tmpl:1: nil is not a command"),
        ("{{ $a, $b := .L }}", "t.tmpl:1: too many declarations in command"),
        ("\n{{break}}", "t.tmpl:2: {{break}} outside {{range}}"),
        ("{{range .L}}{{else}}{{continue}}{{end}}", "t.tmpl:1: {{continue}} outside {{range}}"),
        ("{{/* never closed", "t.tmpl:1: unclosed comment"),
        ('{{define "x"}}{{end}}', "t.tmpl:1: {{define}} is not supported"),
        ("{{range .L}}{{else if .X}}{{end}}", "t.tmpl:1: unexpected 'if' after else in {{range}}"),
    ],
)
def test_parse_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse(source, "t.tmpl")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("source", "data", "message"),
    [
        ("ok\n{{len .N}}", {"N": 3}, "t.tmpl:2: error calling len: len of type int"),
        ("{{index .L 5}}", {"L": [1]}, "t.tmpl:1: error calling index: index out of range: 5"),
        ("\n\n{{.S.Field}}", {"S": "str"}, "t.tmpl:3: can't evaluate field Field in type string"),
        ("{{.L.x}}", {"L": [1]}, "t.tmpl:1: can't evaluate field x in type []interface {}"),
        ("{{len}}", {}, "t.tmpl:1: wrong number of args for len: want 1 got 0"),
        ("{{not 1 2}}", {}, "t.tmpl:1: wrong number of args for not: want 1 got 2"),
        ("{{.A 1}}", {"A": 1}, "t.tmpl:1: can't give argument to non-function .A"),
        ("{{1 | .A}}", {"A": 1}, "t.tmpl:1: can't give argument to non-function .A"),
        ("{{upper 3}}", {}, "t.tmpl:1: error calling upper: wrong type for value; expected string; got int"),
        ('x\n{{if eq .N "1"}}{{end}}', {"N": 1}, "t.tmpl:2: error calling eq: incompatible types for comparison"),
        ('{{if false}}{{else if\nlen 3}}{{end}}', {}, "t.tmpl:1: error calling len: len of type int"),
    ],
)
def test_execution_errors(source: str, data: dict, message: str) -> None:
    tpl = parse(source, "t.tmpl")  # parses fine
    with pytest.raises(TemplateError) as info:
        tpl.render(data)
    assert str(info.value) == message


# ---------------------------------------------------------------------------
# Sandbox and limits
# ---------------------------------------------------------------------------


def test_no_attribute_access() -> None:
    assert render("[{{.__class__}}]", {}) == "[]"
    assert render("[{{.__class__.__mro__}}]", {}) == "[]"
    assert render("[{{.keys}}{{.items}}{{.get}}]", {}) == "[]"
    assert render('[{{index . "__class__"}}]', {}) == "[]"
    assert render("{{.items}}", {"items": "a key, not the method"}) == "a key, not the method"
    with pytest.raises(TemplateError, match="can't evaluate field __class__ in type string"):
        render("{{.__class__}}", "a string")
    with pytest.raises(TemplateError, match="can't evaluate field __globals__ in type int"):
        render("{{.N.__globals__}}", {"N": 1})
    with pytest.raises(TemplateError, match='function "getattr" not defined'):
        parse('{{getattr . "x"}}')
    with pytest.raises(TemplateError, match='function "eval" not defined'):
        parse('{{eval "1"}}')


def test_range_limit() -> None:
    assert render("{{range .}}{{end}}x", list(range(MAX_RANGE_ITEMS))) == "x"
    err = error_of("a\n{{range .}}{{end}}", list(range(MAX_RANGE_ITEMS + 1)))
    assert err.line == 2 and "range limit exceeded" in str(err)
    # The budget is per render, across nested loops.
    with pytest.raises(TemplateError, match="range limit exceeded"):
        render("{{range .}}{{range $}}{{end}}{{end}}", list(range(400)))
    with pytest.raises(TemplateError, match="range limit exceeded"):
        render("{{range 1000000000000}}{{end}}")


def test_output_limit() -> None:
    big = "x" * (1024 * 1024)
    assert len(render("{{range .L}}{{$.S}}{{end}}", {"L": list(range(9)), "S": big})) == 9 * len(big)
    with pytest.raises(TemplateError, match="template output too large"):
        render("{{range .L}}{{$.S}}{{end}}", {"L": list(range(20)), "S": big})
    # Many small text chunks add up too.
    chunk = "y" * 200
    assert len(render("{{range .}}" + chunk + "{{end}}", list(range(50_000)))) == 10_000_000
    err = error_of("\n{{range .}}" + chunk + "{{end}}", list(range(60_000)))
    assert str(err) == "t.tmpl:2: template output too large"


def test_output_limit_on_intermediate_values() -> None:
    # Doubling a string in a loop must be stopped long before memory runs out.
    with pytest.raises(TemplateError, match="template output too large"):
        render('{{$s := "ab"}}{{range 100}}{{$s = printf "%s%s" $s $s}}{{end}}')
    with pytest.raises(TemplateError, match="template output too large"):
        render('{{printf "%099999999d" 1}}')
    with pytest.raises(TemplateError, match="template output too large"):
        render('{{$s := printf "%01000000d" 0}}{{replace "" $s $s}}')
    with pytest.raises(TemplateError, match="template output too large"):
        render('{{$s := printf "%01000000d" 0}}{{print $s $s $s $s $s $s $s $s $s $s $s}}')


def test_nesting_limit() -> None:
    ok = "{{if true}}" * MAX_NESTING + "x" + "{{end}}" * MAX_NESTING
    assert render(ok) == "x"
    too_deep = "{{if true}}" * (MAX_NESTING + 1) + "x" + "{{end}}" * (MAX_NESTING + 1)
    err = error_of(too_deep)
    assert "nested too deeply" in str(err)
    with pytest.raises(TemplateError, match="nested too deeply"):
        parse("{{" + "(" * 5000 + "1" + ")" * 5000 + "}}")
    assert render("{{" + "(" * 50 + "1" + ")" * 50 + "}}") == "1"


def test_deeply_nested_data_does_not_crash() -> None:
    data: list = []
    cur = data
    for _ in range(5000):
        nxt: list = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(TemplateError):
        render("{{.}}", data)
    assert render("{{toJson .}}", data) == ""  # sprig's toJson yields "" on marshal errors
