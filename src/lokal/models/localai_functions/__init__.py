"""Tool calls the way a LocalAI model config sets them up: the `function:` block and
`template.function`.

A config that says nothing about functions keeps lokal's own JSON envelope (see
`functions`). A config with a `function:` block or a `template.function`, rendered with
LocalAI's Go templates, is served as LocalAI serves it:

* the prompt: `template.function` (when the request has tools) renders the
  conversation with `.Functions`, else `template.chat`; each message goes through
  `template.chat_message` with `.FunctionCall` (a past call) and `.RoleName` "tool"
  for results;
* the grammar (unless `function.grammar.disable`): one JSON object naming a function
  (`function_name_key`, default `name`) and its arguments (`function_arguments_key`,
  default `arguments`), the functions being the request's plus the "no action"
  function (`no_action_function_name`, default `answer`, unless `disable_no_action`)
  that carries a reply in `message`. The grammar options change its root:
  `parallel_calls` (an array of calls, one per line unless
  `disable_parallel_new_lines`), `mixed_mode` (free text around the JSON, or only
  free text with `no_mixed_free_string`), `expect_strings_after_json`, `prefix`
  (a literal before the JSON), `properties_order`; `triggers` make the grammar lazy
  (it applies from a trigger word on);
* the reply, once whole: `replace_llm_results` rewrite it, `capture_llm_results`
  take the text to return beside calls, `replace_function_results` rewrite it for
  parsing, then calls come from `response_regex` (named groups for name and
  arguments, `argument_regex` turning `key=value` pairs into JSON), or from the
  JSON objects in the text (or in what `json_regex_match` captures), and last from
  `<tool_call>` / `<function=NAME>` markup. A call of the no-action function is a
  reply. `automatic_tool_parsing_fallback` wraps a non-JSON argument string as
  `{"query": ...}` and lets a model whose chat template owns tools (native) have
  calls written as text parsed too.

Regular expressions are RE2 (as Go's are): linear time whatever a gallery sends.
Calls leave through `ToolCallDelta`s like every other tool call, so every API family
gets them. The reply is parsed when it is whole (LocalAI does the same): a streamed
answer on this path arrives at its end.

Modules: `config` (the `function:` block's schema), `grammar` (its GBNF), `planning` (a
request's function plan and what its templates see), `replies` (a reply read into text and
calls). This package imports none of them.
"""
