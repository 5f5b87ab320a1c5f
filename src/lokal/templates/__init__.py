"""Sandboxed renderer for the Go ``text/template`` subset used by LocalAI prompt templates.

Data is plain dicts/lists/str/int/float/bool/None; ``.Name`` is a dict key lookup
only (never Python attribute access), nothing is evaluated with eval/exec and no
files are read.  Supported: text, ``{{- -}}`` trim markers, comments, fields,
variables, literals, function calls, parenthesised sub-expressions, pipelines,
``if``/``else if``/``with``/``else with``/``range``/``else``/``break``/``continue``.
Not supported: ``define``/``template``/``block``, methods, ``call``, ``slice``,
``html``/``js``/``urlquery``.

Split by stage: ``lexer`` (tokens, string and number unquoting), ``nodes`` (parse tree),
``parser``, ``builtins`` (values, formatting, the Go functions) and ``render`` (the evaluator
and ``Template``/``parse``), over ``common`` (the error type and the limits).  Nothing here
imports from the rest of lokal.
"""

from lokal.templates.common import MAX_NESTING as MAX_NESTING
from lokal.templates.common import MAX_OUTPUT_CHARS as MAX_OUTPUT_CHARS
from lokal.templates.common import MAX_RANGE_ITEMS as MAX_RANGE_ITEMS
from lokal.templates.common import MAX_WORK_CHARS as MAX_WORK_CHARS
from lokal.templates.common import TemplateError
from lokal.templates.render import Template, parse

__all__ = ["TemplateError", "Template", "parse"]
