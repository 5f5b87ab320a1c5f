"""The schema of a LocalAI config's `function:` block (read by `models.config`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lokal.models.localai_config import compile_regex


def _patterns(value: Any) -> Any:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list):
        for item in items:
            if isinstance(item, str):
                compile_regex(item)
    return items


class ReplaceResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str = ""
    value: str = ""

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        compile_regex(value)
        return value


class GrammarTrigger(BaseModel):
    model_config = ConfigDict(extra="allow")

    word: str = ""
    at_start: bool = False


class GrammarConfig(BaseModel):
    """`function.grammar`."""

    model_config = ConfigDict(extra="allow")

    parallel_calls: bool = False
    disable_parallel_new_lines: bool = False
    mixed_mode: bool = False
    no_mixed_free_string: bool = False
    disable: bool = False
    prefix: str = ""
    expect_strings_after_json: bool = False
    properties_order: str = ""
    schema_type: str = ""
    triggers: list[GrammarTrigger] = Field(default_factory=list)

    @field_validator("schema_type")
    @classmethod
    def _schema(cls, value: str) -> str:
        if value not in ("", "json", "llama3.1"):
            raise ValueError("schema_type must be json or llama3.1")
        return value


class FunctionConfig(BaseModel):
    """`function:` of a LocalAI model config."""

    model_config = ConfigDict(extra="allow")

    disable_no_action: bool = False
    no_action_function_name: str = ""
    no_action_description_name: str = ""
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    response_regex: list[str] = Field(default_factory=list)
    json_regex_match: list[str] = Field(default_factory=list)
    argument_regex: list[str] = Field(default_factory=list)
    argument_regex_key_name: str = ""
    argument_regex_value_name: str = ""
    replace_function_results: list[ReplaceResult] = Field(default_factory=list)
    replace_llm_results: list[ReplaceResult] = Field(default_factory=list)
    capture_llm_results: list[str] = Field(default_factory=list)
    function_name_key: str = ""
    function_arguments_key: str = ""
    automatic_tool_parsing_fallback: bool = False
    xml_format_preset: str = ""
    disable_peg_parser: bool = False

    @field_validator("response_regex", "json_regex_match", "argument_regex", "capture_llm_results",
                     mode="before")
    @classmethod
    def _regexes(cls, value: Any) -> Any:
        return _patterns(value)

    @property
    def name_key(self) -> str:
        return self.function_name_key or "name"

    @property
    def arguments_key(self) -> str:
        return self.function_arguments_key or "arguments"

    @property
    def no_action(self) -> str:
        return self.no_action_function_name or "answer"

    @property
    def no_action_description(self) -> str:
        return self.no_action_description_name or "use this action to answer without performing any action"

