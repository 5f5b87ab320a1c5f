"""Matching a request's stop sequences in generated text, so an answer can say which
one ended it (the engine strips a stop sequence without saying which matched)."""

from __future__ import annotations


class StopScanner:
    """Cuts one choice's text at the first of the stop sequences and says which.

    Text that could be the start of a stop sequence is held back until the next
    piece tells; `matched` is set once one is found (the generation should stop)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str, final: bool = False) -> str:
        """The part of text that may be sent now (final: the choice ends here, nothing
        is held back)."""
        if self.matched is not None:
            return ""
        text = self._held + text
        self._held = ""
        found = [(text.find(s), s) for s in self.stops if s in text]
        if found:
            position, stop = min(found)
            self.matched = stop
            return text[:position]
        if not final:
            keep = self._partial(text)
            if keep:
                self._held = text[len(text) - keep:]
                text = text[:len(text) - keep]
        return text

    def flush(self) -> str:
        """What is held back, when the choice ends without a match."""
        held, self._held = self._held, ""
        return held

    def _partial(self, text: str) -> int:
        """The length of text's longest ending that starts some stop sequence."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
