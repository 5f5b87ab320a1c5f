"""What every stage of the template engine shares: the error type and the limits."""

from __future__ import annotations

from typing import Any

MAX_RANGE_ITEMS = 100_000          # range iterations per render, all loops together
MAX_OUTPUT_CHARS = 10 * 1024 * 1024  # output size, and size of any single string value
MAX_WORK_CHARS = 10 * MAX_OUTPUT_CHARS  # total characters produced by function calls
MAX_NESTING = 100                  # nested blocks; also nested parentheses per action


class TemplateError(ValueError):
    """Parse or execution error; ``str()`` is ``'<name>:<line>: <detail>'``."""

    def __init__(self, name: str, line: int, detail: str) -> None:
        self.name, self.line, self.detail = name, line, detail
        super().__init__(f"{name}:{line}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TemplateError, (self.name, self.line, self.detail))
