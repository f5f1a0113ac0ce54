"""A completion's text as it grows token by token: what may be sent to a client now, and where it stops.

Text that could still turn into a stop string, or that ends inside a multi-byte character, is held
back until the next token decides it, so a streamed reply never shows what the whole reply would not.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a tokenizer decodes a cut multi-byte character to


class CompletionText:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters already handed out
        self.stopped = False  # a stop string was reached

    def push(self, token: int) -> str:
        """Add one generated token; the new text that is safe to send (may be empty)."""
        self.ids.append(token)
        text = self.decode()
        cut = self.first_stop(text)
        if cut is not None:
            self.stopped = True
            return self.take(text[:cut])
        return self.take(text[: len(text) - self.held_back(text)])

    def finish(self) -> str:
        """The rest of the text, once no token will follow."""
        return "" if self.stopped else self.take(self.decode())

    def decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def first_stop(self, text: str) -> int | None:
        start = max(0, self.sent - max(map(len, self.stop), default=0))
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def held_back(self, text: str) -> int:
        """Characters at the end of `text` that the next token may still change or cut."""
        if text.endswith(REPLACEMENT):
            return len(text) - len(text.rstrip(REPLACEMENT))
        return max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)

    def take(self, safe: str) -> str:
        delta = safe[self.sent:]
        self.sent = max(self.sent, len(safe))
        return delta
