"""A chat request's functions on the LocalAI path: whether a config sets them up, the plan
(functions shown to the template, the grammar, the lazy triggers) and what the chat_message
template sees of a past call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lokal.models.localai_functions.config import FunctionConfig
from lokal.models.localai_functions.grammar import build_grammar
from lokal.tasks import ChatTask, Message, Tool


def go_json(value: Any) -> Any:
    """A value as Go's encoding/json would order it: map keys sorted."""
    if isinstance(value, dict):
        return {k: go_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [go_json(v) for v in value]
    return value


@dataclass
class LocalAIPlan:
    """How one chat request's functions run on the LocalAI path."""

    config: FunctionConfig
    functions: list[dict[str, Any]]  # what `.Functions` shows the template
    grammar: str | None  # GBNF, or None when the config turns the grammar off
    native: bool = False  # the model's chat template owns tools; only the fallback parses text
    parallel: bool = True  # more than one call per turn may come out
    tools_requested: bool = True
    lazy_triggers: list[dict[str, Any]] = field(default_factory=list)


def uses_localai_functions(config: Any) -> bool:
    """Whether a model config sets functions up LocalAI's way (a `function:` block or a
    `template.function`)."""
    return getattr(config, "function", None) is not None or bool(getattr(config.template, "function", None))


def plan(config: Any, task: ChatTask, *, renders_go: bool) -> LocalAIPlan | None:
    """The LocalAI function plan for a task, or None when lokal's own paths serve it."""
    fconfig: FunctionConfig = getattr(config, "function", None) or FunctionConfig()
    if not renders_go:
        # The GGUF's own template renders (use_tokenizer_template): llama.cpp owns tools,
        # as in LocalAI; text calls are parsed only when the config asks for the fallback.
        if fconfig.automatic_tool_parsing_fallback:
            return LocalAIPlan(fconfig, [], None, native=True, tools_requested=bool(task.tools))
        return None
    if not uses_localai_functions(config):
        return None
    if not task.tools or task.tool_choice == "none":
        if fconfig.automatic_tool_parsing_fallback:
            return LocalAIPlan(fconfig, [], None, tools_requested=False)
        return None
    tools: list[Tool] = task.tools
    offered = [{"name": t.name, "description": t.description, "parameters": t.parameters or {}} for t in tools]
    # What `.Functions` shows a Go template: LocalAI's Function struct (Name, Description,
    # Strict, Parameters), its parameters a map (keys in Go's sorted order).
    functions = [{"Name": t.name, "Description": t.description, "Strict": False,
                  "Parameters": go_json(t.parameters or {})} for t in tools]
    if not fconfig.grammar.disable and not fconfig.disable_no_action:
        offered.append({"name": fconfig.no_action, "description": fconfig.no_action_description,
                        "parameters": {"properties": {"message": {
                            "type": "string", "description": "The message to reply the user with"}}}})
    if task.tool_choice == "required":  # a call must come: the grammar offers no reply
        offered = offered[:len(tools)]
    elif task.tool_choice != "auto":
        offered = [f for f in offered if f["name"] == task.tool_choice]
    grammar = None if fconfig.grammar.disable else build_grammar(offered, fconfig)
    triggers = [{"type": 1, "value": t.word} for t in fconfig.grammar.triggers if t.word]
    return LocalAIPlan(fconfig, functions, grammar, parallel=task.parallel_tool_calls is not False,
                       lazy_triggers=triggers)


def message_data(message: Message) -> dict[str, Any]:
    """What LocalAI's chat_message template sees of a message beyond its text."""
    data: dict[str, Any] = {}
    if message.tool_calls:
        data["FunctionCall"] = [{"index": i, "id": c.id, "type": "function",
                                 "function": {"name": c.name, "arguments": c.arguments}}
                                for i, c in enumerate(message.tool_calls)]
    return data
