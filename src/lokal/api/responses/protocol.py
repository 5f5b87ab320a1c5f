"""OpenAI's Responses API request, and its translation into a chat task.

lokal keeps no responses: `previous_response_id`, `conversation` and item
references are refused with a 400 that says so (the client sends the whole
conversation as input items instead, as Codex CLI does with `store: false`).
Unknown fields are accepted and ignored; known ones are checked. `input_image`
parts (in user messages and in function call outputs) go through lokal's one image
path (`api/images.py`): `image_url` a `data:` URI, or an http(s) URL where the
server allows remote images; a `file_id` is refused, since nothing is stored.

Tools: function tools, and `namespace` tools (a named group of functions, as Codex
sends its sub-agent tools) flattened into functions named `<namespace>__<name>`
(`<namespace><name>` when the namespace already ends with a separator, as MCP's
`mcp__server__` does). The model sees and calls the flat names; its calls go back
to the client under the names the client sent, `namespace` and `name` apart
(`NamespacedNames`), and earlier calls the client sends back with a `namespace`
are flattened the same way. Tools only OpenAI's servers run (`web_search`, ...)
are left out with a log line, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lokal import tasks
from lokal.api.images import ImageLoader
from lokal.api.openai.protocol import HOSTED_TOOLS, _Request, skip_hosted
from lokal.errors import BadRequest

_SEPARATORS = ("_", ".", "/", ":", "-")


def flat_name(namespace: str | None, name: str) -> str:
    """The one function name a namespaced function goes by (see the module's docstring)."""
    if not namespace:
        return name
    if namespace.endswith(_SEPARATORS):
        return namespace + name
    return f"{namespace}__{name}"


#: flat function name -> (namespace, name) as the client sent them
NamespacedNames = dict[str, tuple[str, str]]


class InputText(_Request):
    type: Literal["input_text", "output_text", "text", "summary_text", "reasoning_text"]
    text: str


class Refusal(_Request):
    type: Literal["refusal"]
    refusal: str = ""


class InputImage(_Request):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None  # auto/low/high: the projector decides, so it is ignored

    def check(self, where: str) -> str:
        """The image's URL, or a 400 naming the part."""
        if self.image_url:
            return self.image_url
        if self.file_id:
            raise BadRequest(f"{where}: file_id is not supported: this server stores no files. "
                             "Send the image as image_url, a data: URI (data:image/png;base64,...).",
                             param=where)
        raise BadRequest(f"{where}: an input_image needs an image_url (a data: URI).", param=where)


class OtherPart(_Request):
    """Files, audio: not taken by this server's models."""

    type: str


#: An image part still to load: the task message it belongs to, its URL, where it is.
Pending = tuple[tasks.Message, str, str]


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | Refusal | InputImage | OtherPart]
    id: str | None = None
    status: str | None = None

    @model_validator(mode="after")
    def _known_parts(self) -> MessageItem:
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part, (InputText, Refusal, InputImage)):
                    raise ValueError(f"content parts of type {part.type!r} are not supported by this "
                                     "server's models; send input_text and input_image parts")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text if isinstance(p, InputText) else p.refusal
                       for p in self.content if isinstance(p, (InputText, Refusal)))

    def images(self) -> list[tuple[int, InputImage]]:
        if isinstance(self.content, str):
            return []
        return [(j, p) for j, p in enumerate(self.content) if isinstance(p, InputImage)]


class FunctionCallItem(_Request):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    namespace: str | None = None
    arguments: str = ""
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText | InputImage | OtherPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        for part in self.output:
            if not isinstance(part, (InputText, InputImage)):
                raise BadRequest(f"function_call_output parts of type {part.type!r} are not supported; "
                                 "send text and images", param="input")
        return "".join(p.text for p in self.output if isinstance(p, InputText))

    def images(self) -> list[tuple[int, InputImage]]:
        if isinstance(self.output, str):
            return []
        return [(j, p) for j, p in enumerate(self.output) if isinstance(p, InputImage)]


class ReasoningItem(_Request):
    """A reasoning item from an earlier turn: not part of the prompt (as with OpenAI's
    stateless use), accepted so clients can send their history back unchanged."""

    type: Literal["reasoning"]


class OtherItem(_Request):
    type: str


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | OtherItem


class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamespaceTool(_Request):
    """Functions grouped under a name (Codex's `multi_agent_v1`, MCP servers)."""

    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    tools: list[FunctionTool | OtherTool] = Field(default_factory=list, max_length=128)


class OtherTool(_Request):
    type: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _needs_schema(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format of type json_schema needs a schema")
        return self


class TextOptions(_Request):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem] = Field(default="")
    instructions: str | None = None
    tools: list[FunctionTool | NamespaceTool | OtherTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    text: TextOptions | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    user: str | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    # lokal and llama.cpp extras, as on chat completions
    seed: int | None = None
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    timeout: float | None = Field(None, gt=0, le=86_400)
    ignore_eos: bool | None = None

    def to_task(self) -> tasks.ChatTask:
        """The task of a request without images (see `to_task_with_images`)."""
        task, pending = self._translate()
        if pending:
            raise RuntimeError("a request with images is translated with to_task_with_images")
        return task

    async def to_task_with_images(self, loader: ImageLoader) -> tasks.ChatTask:
        """The task with every input_image loaded and checked (ImageError: a 400 naming it)."""
        task, pending = self._translate()
        for message, url, where in pending:
            message.images.append(await loader.load(url, where=where, param=where))
        return task

    def namespaced(self) -> NamespacedNames:
        """The flat names of namespaced functions, and the names the client gave them."""
        out: NamespacedNames = {}
        for tool in self.tools or []:
            if isinstance(tool, NamespaceTool):
                for child in tool.tools:
                    if isinstance(child, FunctionTool):
                        out[flat_name(tool.name, child.name)] = (tool.name, child.name)
        return out

    def _tools(self) -> list[tasks.Tool]:
        """Function tools, namespaced ones flattened, hosted ones left out (logged)."""
        tools: list[tasks.Tool] = []
        hosted: list[str] = []

        def function(tool: Any, namespace: str | None, where: str) -> None:
            if isinstance(tool, FunctionTool):
                name = flat_name(namespace, tool.name)
                if any(t.name == name for t in tools):
                    raise BadRequest(f"{where}: two tools are named {name!r} (a namespace's functions go "
                                     "by <namespace>__<name>).", param="tools")
                description = tool.description or ""
                tools.append(tasks.Tool(name, description, tool.parameters))
            elif tool.type == "function":
                raise BadRequest(f"{where}: a function tool needs a name (and may have description and "
                                 "parameters).", param="tools")
            elif namespace is not None:
                raise BadRequest(f"{where}: a namespace holds function tools; {tool.type!r} is not "
                                 "supported inside one.", param="tools")
            elif tool.type in HOSTED_TOOLS:
                hosted.append(tool.type)
            elif tool.type == "namespace":
                raise BadRequest(f"{where}: a namespace tool needs a name and its function tools "
                                 "(namespaces do not nest).", param="tools")
            else:
                raise BadRequest(f"{where}: tools of type {tool.type!r} are not supported by this server; "
                                 "send function tools ({\"type\": \"function\", \"name\", \"parameters\"}), "
                                 "or namespace tools holding them.", param="tools")

        for i, tool in enumerate(self.tools or []):
            if isinstance(tool, NamespaceTool):
                for j, child in enumerate(tool.tools):
                    function(child, tool.name, f"tools.{i}.tools.{j}")
            else:
                function(tool, None, f"tools.{i}")
        skip_hosted(hosted, "responses")
        return tools

    def _translate(self) -> tuple[tasks.ChatTask, list[Pending]]:
        if self.previous_response_id is not None:
            raise BadRequest("previous_response_id is not supported: this server keeps no responses "
                             "(it is stateless). Send the whole conversation as input items, "
                             "with store: false.", param="previous_response_id")
        if self.conversation is not None:
            raise BadRequest("conversation is not supported: this server keeps no conversations "
                             "(it is stateless). Send the whole conversation as input items.",
                             param="conversation")
        if self.background:
            raise BadRequest("background responses are not supported: this server keeps no "
                             "responses; use stream: true for long generations.", param="background")
        messages: list[tasks.Message] = []
        pending: list[Pending] = []
        if self.instructions:
            messages.append(tasks.Message("system", self.instructions))
        if isinstance(self.input, str):
            if self.input:
                messages.append(tasks.Message("user", self.input))
        else:
            names: dict[str, str] = {}
            for i, item in enumerate(self.input):
                _add_item(messages, item, names, pending, f"input.{i}")
        if not any(m.role != "system" for m in messages):
            raise BadRequest("input is empty: send a string or at least one input item.", param="input")
        tools = self._tools()
        choice, tools = _tool_choice(self.tool_choice, tools)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        sampling = tasks.Sampling(max_tokens=self.max_output_tokens, temperature=self.temperature,
                                  top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, seed=self.seed,
                                  stop=stop, ignore_eos=self.ignore_eos)
        response_format = None
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            response_format = tasks.ResponseFormat("json_schema", fmt.schema_, fmt.name)
        elif fmt is not None and fmt.type == "json_object":
            response_format = tasks.ResponseFormat("json_object")
        options = tasks.GenerationOptions(sampling=sampling, response_format=response_format,
                                          stream=self.stream, timeout=self.timeout)
        task = tasks.ChatTask(self.model, messages, options, tools=tools, tool_choice=choice,
                              parallel_tool_calls=self.parallel_tool_calls)
        return task, pending


def _add_item(messages: list[tasks.Message], item: Any, names: dict[str, str],
              pending: list[Pending], where: str) -> None:
    if isinstance(item, MessageItem):
        role = "system" if item.role == "developer" else item.role
        message = tasks.Message(role, item.text())  # type: ignore[arg-type]
        for j, part in item.images():
            at = f"{where}.content.{j}"
            if item.role != "user":
                raise BadRequest(f"{at}: input_image parts belong in user messages.", param=at)
            pending.append((message, part.check(at), at))
        messages.append(message)
    elif isinstance(item, FunctionCallItem):
        name = flat_name(item.namespace, item.name)
        names[item.call_id] = name
        call = tasks.ToolCall(item.call_id, name, item.arguments)
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and last.tool_calls:
            last.tool_calls.append(call)  # parallel calls: one assistant turn
        else:
            messages.append(tasks.Message("assistant", "", tool_calls=[call]))
    elif isinstance(item, FunctionCallOutputItem):
        message = tasks.Message("tool", item.text(), tool_call_id=item.call_id, name=names.get(item.call_id))
        for j, part in item.images():
            at = f"{where}.output.{j}"
            pending.append((message, part.check(at), at))
        messages.append(message)
    elif isinstance(item, ReasoningItem):
        return
    elif item.type in ("message", "function_call", "function_call_output"):
        raise BadRequest(f"an input item of type {item.type!r} is missing fields or has invalid ones "
                         "(message: role and content; function_call: call_id, name, arguments; "
                         "function_call_output: call_id and output).", param="input")
    else:
        hint = (" (this server is stateless: send the items themselves)" if item.type == "item_reference"
                else "")
        raise BadRequest(f"input items of type {item.type!r} are not supported{hint}.", param="input")


def _tool_choice(choice: Any, tools: list[tasks.Tool]) -> tuple[str, list[tasks.Tool]]:
    if choice is None:
        return "auto", tools
    if isinstance(choice, str):
        return choice, tools
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return flat_name(choice.get("namespace"), choice["name"]), tools
    if kind == "allowed_tools":
        allowed = {flat_name(t.get("namespace"), str(t.get("name"))) for t in choice.get("tools") or []
                   if isinstance(t, dict)}
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise BadRequest("tool_choice.mode must be auto or required", param="tool_choice")
        return mode, [t for t in tools if t.name in allowed]
    raise BadRequest("tool_choice must be none, auto, required, {\"type\": \"function\", \"name\": ...} "
                     "or {\"type\": \"allowed_tools\", ...}", param="tool_choice")

