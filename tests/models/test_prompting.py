"""Requests into engine calls: config defaults, stopwords, and LocalAI prompt templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.api.openai.protocol import (ChatCompletionRequest, CompletionRequest, ImageURLPart, TextPart,
                                       ToolResultPart, _text)
from lokal.models import prompting
from lokal.models.catalog import ModelEntry, read_config_file
from lokal.models.prompting import EngineCall, PromptError


def plan_chat(entry: ModelEntry, request: dict[str, object]) -> EngineCall:
    """An OpenAI chat request as the route translates and plans it."""
    task = ChatCompletionRequest.model_validate({"model": "m", **request}).to_task()
    return prompting.plan_chat(entry, task)


def plan_completion(entry: ModelEntry, request: dict[str, object]) -> EngineCall:
    task = CompletionRequest.model_validate({"model": "m", **request}).to_task()
    return prompting.plan_completion(entry, task)

GPT4ALL_CHAT = """\
The prompt below is a question to answer, a task to complete, or a conversation to respond to; decide which and write an appropriate response.
### Prompt:
{{.Input}}
### Response:
"""


def make_entry(tmp_path: Path, yaml_text: str, **tmpl_files: str) -> ModelEntry:
    """A ModelEntry read from a real config in a fresh models folder."""
    folder = tmp_path / "models"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 16)
    for name, text in tmpl_files.items():
        (folder / f"{name}.tmpl").write_text(text)
    path = folder / "m.yaml"
    path.write_text("name: m\nparameters:\n  model: m.gguf\n" + yaml_text)
    [entry] = read_config_file(folder, path)
    assert entry.ok, entry.error
    return entry


def user(text: object) -> dict[str, object]:
    return {"role": "user", "content": text}


# Request values and config defaults ---------------------------------------------------


DEFAULTS = """\
  temperature: 0.2
  top_p: 0.5
  top_k: 40
  max_tokens: 64
  seed: 7
  repeat_penalty: 1.3
  presence_penalty: 0.4
  frequency_penalty: 0.6
"""


def test_config_defaults_fill_what_the_request_leaves_out(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, DEFAULTS)
    call = plan_chat(entry, {"model": "m", "messages": [user("hi")]})
    assert call.mode == "chat"
    assert call.body == {
        "temperature": 0.2, "top_p": 0.5, "top_k": 40, "max_tokens": 64, "seed": 7,
        "repeat_penalty": 1.3, "presence_penalty": 0.4, "frequency_penalty": 0.6,
        "min_p": 0.0,  # LocalAI's default for what the config leaves out
        "messages": [{"role": "user", "content": "hi"}], "return_progress": True,
    }


def test_request_values_override_config_including_zero(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, DEFAULTS)
    request = {"model": "m", "messages": [user("hi")], "temperature": 0, "top_k": 0, "top_p": 1.0,
               "max_tokens": 5, "seed": 0, "presence_penalty": 0, "frequency_penalty": 0.0,
               "repeat_penalty": 1.0}
    body = plan_chat(entry, request).body
    assert body["temperature"] == 0
    assert body["top_k"] == 0
    assert body["top_p"] == 1.0
    assert body["max_tokens"] == 5
    assert body["seed"] == 0
    assert body["presence_penalty"] == 0 and body["frequency_penalty"] == 0.0
    assert body["repeat_penalty"] == 1.0


def test_same_for_completions(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, DEFAULTS)
    call = plan_completion(entry, {"model": "m", "prompt": "x", "temperature": 0, "top_k": 0})
    assert call.mode == "completion"
    assert call.body["temperature"] == 0 and call.body["top_k"] == 0
    assert call.body["top_p"] == 0.5 and call.body["max_tokens"] == 64
    assert call.body["prompt"] == "x"


def test_none_in_the_request_means_unset(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, DEFAULTS)
    body = plan_chat(entry, {"messages": [user("hi")], "temperature": None, "stop": None}).body
    assert body["temperature"] == 0.2
    assert "stop" not in body


def test_max_completion_tokens_maps_to_max_tokens(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, DEFAULTS)
    body = plan_chat(entry, {"messages": [user("hi")], "max_completion_tokens": 9}).body
    assert body["max_tokens"] == 9
    assert "max_completion_tokens" not in body
    # max_tokens set too: it wins (it is what the engine reads).
    body = plan_chat(entry, {"messages": [user("hi")], "max_tokens": 3, "max_completion_tokens": 9}).body
    assert body["max_tokens"] == 3
    # Without a config default either.
    bare = make_entry(tmp_path / "bare", "")
    assert plan_chat(bare, {"messages": [user("hi")], "max_completion_tokens": 11}).body["max_tokens"] == 11


def test_config_max_tokens_zero_means_no_limit(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "  max_tokens: 0\n")
    assert "max_tokens" not in plan_chat(entry, {"messages": [user("hi")]}).body


def test_our_fields_never_reach_the_engine(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "")
    body = plan_completion(entry, {"model": "m", "prompt": "p", "user": "u", "stream": True,
                                   "stream_options": {"include_usage": True}, "echo": False,
                                   "best_of": 1, "n_probs": 2}).body
    # (the sampling values are LocalAI's defaults for what neither request nor config sets)
    assert body == {"prompt": "p", "n_probs": 2, "temperature": 0.9, "top_p": 0.95, "top_k": 40, "min_p": 0.0,
                    "return_progress": True}


def test_a_suffix_is_a_fill_in_the_middle_call(tmp_path: Path) -> None:
    call = plan_completion(make_entry(tmp_path, ""), {"model": "m", "prompt": "p", "suffix": "s", "max_tokens": 3})
    assert call.mode == "infill" and call.body == {"input_prefix": "p", "input_suffix": "s", "max_tokens": 3,
                                                   "return_progress": True, "temperature": 0.9, "top_p": 0.95,
                                                   "top_k": 40, "min_p": 0.0}


# Stopwords -----------------------------------------------------------------------------


STOPS = "stopwords:\n  - '<|im_end|>'\n  - '###'\n"


@pytest.mark.parametrize("requested,expected", [
    (None, ["<|im_end|>", "###"]),
    ("END", ["END", "<|im_end|>", "###"]),
    (["END", "###"], ["END", "###", "<|im_end|>"]),
    (["<|im_end|>", "###"], ["<|im_end|>", "###"]),
    ([], ["<|im_end|>", "###"]),
])
def test_config_stopwords_merge_with_request_stop(tmp_path: Path, requested: object,
                                                  expected: list[str]) -> None:
    """Several choices: the engine matches every stop sequence, the request's first."""
    entry = make_entry(tmp_path, STOPS)
    request = {"messages": [user("hi")], "n": 2}
    if requested is not None:
        request["stop"] = requested
    assert plan_chat(entry, request).body["stop"] == expected
    completion = dict(request, prompt="x")
    del completion["messages"]
    assert plan_completion(entry, completion).body["stop"] == expected


@pytest.mark.parametrize("requested,scanned", [
    (None, []), ("END", ["END"]), (["END", "###"], ["END", "###"]), ([], []),
])
def test_one_choice_request_stops_are_matched_by_lokal(tmp_path: Path, requested: object,
                                                       scanned: list[str]) -> None:
    """One choice: the config's stopwords go to the engine, the request's are the
    generation's to match (so the answer can name the one that matched)."""
    entry = make_entry(tmp_path, STOPS)
    request = {"messages": [user("hi")]}
    if requested is not None:
        request["stop"] = requested
    for call in (plan_chat(entry, request),
                 plan_completion(entry, {k: v for k, v in dict(request, prompt="x").items() if k != "messages"})):
        assert call.body["stop"] == ["<|im_end|>", "###"] and call.stops == scanned


def test_request_stop_without_config_stopwords(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "")
    assert plan_chat(entry, {"messages": [user("hi")], "stop": "\n"}).stops == ["\n"]
    assert plan_chat(entry, {"messages": [user("hi")], "stop": ["a", "b"], "n": 2}).body["stop"] == ["a", "b"]
    assert "stop" not in plan_chat(entry, {"messages": [user("hi")], "stop": ["a"]}).body
    assert "stop" not in plan_chat(entry, {"messages": [user("hi")], "stop": []}).body
    assert "stop" not in plan_chat(entry, {"messages": [user("hi")]}).body


def test_empty_config_stopword_is_ignored(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "stopwords: ['', 'X']\n")
    assert plan_chat(entry, {"messages": [user("hi")]}).body["stop"] == ["X"]


# GGUF chat template path: messages for the engine ---------------------------------------


def test_config_system_prompt_inserted_when_request_has_none(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "system_prompt: Be terse.\n")
    call = plan_chat(entry, {"messages": [user("hi")]})
    assert call.mode == "chat"
    assert call.body["messages"] == [{"role": "system", "content": "Be terse."},
                                     {"role": "user", "content": "hi"}]


def test_request_system_message_wins_over_config(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "system_prompt: Be terse.\n")
    messages = [user("hi"), {"role": "system", "content": "Be verbose."}]
    assert plan_chat(entry, {"messages": messages}).body["messages"] == messages


def test_no_system_prompt_no_insert(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "")
    assert plan_chat(entry, {"messages": [user("hi")]}).body["messages"] == [user("hi")]


def test_list_content_becomes_text_for_the_engine(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "")
    messages = [user([{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]),
                {"role": "assistant", "content": None}]
    out = plan_chat(entry, {"messages": messages}).body["messages"]
    assert out[0] == {"role": "user", "content": "Hello world"}
    assert out[1] == {"role": "assistant", "content": ""}
    # The request's own messages are not modified.
    assert isinstance(messages[0]["content"], list)


def test_content_text() -> None:
    assert _text(None) == ""
    assert _text("plain") == "plain"
    assert _text([TextPart(type="text", text="a"), ImageURLPart(type="image_url", image_url="data:,"),
                  TextPart(type="text", text="b")]) == "ab"
    assert _text([ToolResultPart(type="tool_result", content=[TextPart(type="text", text="r")]),
                  TextPart(type="text", text="")]) == "r"


# LocalAI templates ---------------------------------------------------------------------


GPT4ALL = "roles:\n  user: ' '\n  system: ' '\ntemplate:\n  chat: gpt4all\n  completion: gpt4all\n"


def test_localai_roles_and_chat_template(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, GPT4ALL, gpt4all=GPT4ALL_CHAT)
    messages = [{"role": "system", "content": "You are helpful."}, user("What is 2+2?"),
                {"role": "assistant", "content": "4"}, user("And 3+3?")]
    call = plan_chat(entry, {"messages": messages, "logprobs": True, "top_logprobs": 2,
                             "temperature": 0})
    assert call.mode == "completion"
    # LocalAI: role prefix + content per message (no role: content alone), joined by "\n".
    expected_input = " You are helpful.\n What is 2+2?\n4\n And 3+3?"
    expected = GPT4ALL_CHAT.replace("{{.Input}}", expected_input)
    assert call.body["prompt"] == expected
    assert "messages" not in call.body
    for key in ("logprobs", "top_logprobs"):
        assert key not in call.body
    assert call.body["temperature"] == 0


def test_localai_list_content_rendered_as_text(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, GPT4ALL, gpt4all="[{{.Input}}]")
    content = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    assert plan_chat(entry, {"messages": [user(content)]}).body["prompt"] == "[ Hello there]"


def test_join_chat_messages_by_character(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "roles: {user: 'U:', assistant: 'A:'}\ntemplate:\n"
                       "  chat: '<{{.Input}}>'\n  join_chat_messages_by_character: ' | '\n")
    messages = [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    assert plan_chat(entry, {"messages": messages}).body["prompt"] == "<U:a | A:b | U:c>"


def test_join_by_empty_string(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "roles: {user: 'U:'}\ntemplate:\n  chat: '{{.Input}}'\n"
                       "  join_chat_messages_by_character: ''\n")
    assert plan_chat(entry, {"messages": [user("a"), user("b")]}).body["prompt"] == "U:aU:b"


CHATML_MESSAGE = (
    "<|im_start|>{{if eq .RoleName \"assistant\"}}assistant{{else if eq .RoleName \"system\"}}system"
    "{{else}}user{{end}}\n{{.Content}}<|im_end|>"
)


def test_chat_message_template_per_message(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  chat_message: chatml-msg\n  chat: chatml\n",
                       **{"chatml-msg": CHATML_MESSAGE, "chatml": "{{.Input}}\n<|im_start|>assistant\n"})
    messages = [{"role": "system", "content": "S"}, user("U"), {"role": "assistant", "content": "A"}]
    prompt = plan_chat(entry, {"messages": messages}).body["prompt"]
    assert prompt == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                      "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>assistant\n")


def test_chat_message_template_without_chat_template(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "roles: {user: 'USER'}\ntemplate:\n"
                       "  chat_message: '{{.MessageIndex}}/{{.Role}}/{{.RoleName}}/{{.Content}}"
                       "{{if .LastMessage}}!{{end}}'\n")
    call = plan_chat(entry, {"messages": [user("a"), {"role": "assistant", "content": "b"}]})
    assert call.mode == "completion"
    assert call.body["prompt"] == "0/USER/user/a\n1//assistant/b!"


def test_chat_message_template_sees_system_prompt_and_name(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "system_prompt: SYS\ntemplate:\n"
                       "  chat_message: '[{{.SystemPrompt}}|{{.FunctionName}}|{{.Content}}]'\n")
    messages = [{"role": "user", "content": "42", "name": "alice"}]
    assert plan_chat(entry, {"messages": messages}).body["prompt"] == "[SYS|alice|42]"


def test_messages_rendered_empty_are_skipped(tmp_path: Path) -> None:
    # A common LocalAI idiom: the chat_message template drops system messages.
    entry = make_entry(tmp_path, "template:\n  chat_message: "
                       "'{{if ne .RoleName \"system\"}}{{.RoleName}}: {{.Content}}{{end}}'\n")
    messages = [{"role": "system", "content": "hidden"}, user("a"), {"role": "assistant", "content": "b"}]
    # No blank line where the system message was.
    assert plan_chat(entry, {"messages": messages}).body["prompt"] == "user: a\nassistant: b"


def test_system_prompt_in_localai_chat_template(tmp_path: Path) -> None:
    chat = "{{if not .SuppressSystemPrompt}}{{.SystemPrompt}}\n{{end}}{{.Input}}"
    entry = make_entry(tmp_path, "system_prompt: CONFIG\nroles: {user: 'U:', system: 'S:'}\n"
                       "template:\n  chat: c\n", c=chat)
    assert plan_chat(entry, {"messages": [user("x")]}).body["prompt"] == "CONFIG\nU:x"
    # A system message in the request suppresses the config's prompt (LocalAI's flag) ...
    body = plan_chat(entry, {"messages": [{"role": "system", "content": "REQ"}, user("x")]}).body
    assert body["prompt"] == "S:REQ\nU:x"
    # ... and the config's prompt is never inserted as a message on this path.
    assert "messages" not in body
    # An empty system message does not count, and renders empty (as LocalAI's).
    body = plan_chat(entry, {"messages": [{"role": "system", "content": ""}, user("x")]}).body
    assert body["prompt"] == "CONFIG\n\nU:x"


def test_role_prefix_without_content_matches_localai(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "roles: {user: 'USER: ', assistant: 'ASSISTANT: '}\n"
                       "template:\n  chat: '{{.Input}}'\n")
    messages = [user("hi"), {"role": "assistant", "content": ""}]
    assert plan_chat(entry, {"messages": messages}).body["prompt"] == "USER: hi\n"


def test_chat_template_alone_without_roles(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  chat: \"Q: {{.Input}}\\nA:\"\n")
    assert plan_chat(entry, {"messages": [user("hi")]}).body["prompt"] == "Q: hi\nA:"


def test_completion_template_on_a_string(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, GPT4ALL + "system_prompt: SP\n",
                       gpt4all="{{.SystemPrompt}}|{{.Instruction}}|{{.Input}}")
    call = plan_completion(entry, {"prompt": "Tell me"})
    assert call.body["prompt"] == "SP|Tell me|Tell me"


def test_completion_template_on_each_prompt_of_a_list(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, GPT4ALL, gpt4all="<{{.Input}}>")
    call = plan_completion(entry, {"prompt": ["a", "b"]})
    assert call.body["prompt"] == ["<a>", "<b>"]


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
def test_completion_template_not_applied_to_token_ids(tmp_path: Path, prompt: list) -> None:
    entry = make_entry(tmp_path, GPT4ALL, gpt4all="<{{.Input}}>")
    call = plan_completion(entry, {"prompt": prompt})
    assert call.body["prompt"] == prompt


def test_chat_only_template_leaves_completions_alone(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  chat: '<{{.Input}}>'\n")
    call = plan_completion(entry, {"prompt": "raw"})
    assert call.body["prompt"] == "raw"


def test_completion_template_does_not_make_chat_render_locally(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  completion: '<{{.Input}}>'\n")
    call = plan_chat(entry, {"messages": [user("hi")]})
    assert call.mode == "chat"
    assert call.body["messages"] == [user("hi")]


def test_chat_template_execution_error_is_a_prompt_error(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  chat: '{{ index .Input 99 }}'\n")
    with pytest.raises(PromptError, match=r"prompt template failed: template\.chat:1: .*index"):
        plan_chat(entry, {"messages": [user("hi")]})


def test_chat_message_template_execution_error_is_a_prompt_error(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  chat_message: '{{ .Content.Nope }}'\n")
    with pytest.raises(PromptError, match="can't evaluate field Nope"):
        plan_chat(entry, {"messages": [user("hi")]})


def test_completion_template_execution_error_is_a_prompt_error(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "template:\n  completion: c\n", c="line one\n{{ index .Input 5 }}")
    with pytest.raises(PromptError, match=r"c\.tmpl:2:"):
        plan_completion(entry, {"prompt": "abc"})
    with pytest.raises(PromptError):
        plan_completion(entry, {"prompt": ["abcdefg", "abc"]})
