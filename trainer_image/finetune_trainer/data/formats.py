"""Normalise rows of any supported layout into one of three example shapes, checking every field.

alpaca (instruction/input/output) and completion (prompt/completion) become prompt/response pairs;
chat rows keep their messages; text rows stay raw text. Preference rows (prompt/chosen/rejected) are
detected here too, and read by data/preference.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from finetune_operator.api.finetunejob import ColumnMapping

from ..errors import InputError
from .load import Row

Format = Literal["alpaca", "chat", "completion", "text", "preference"]
ROLES = ("system", "user", "assistant")
_REQUIRED: dict[str, tuple[str, ...]] = {
    "preference": ("chosen", "rejected"),
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}


@dataclass(frozen=True)
class Example:
    kind: Literal["chat", "pair", "text"]
    messages: tuple[tuple[str, str], ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""

    def response(self) -> str:
        """What the model learns to write: the completion, the last assistant turn, or the text."""
        if self.kind == "chat":
            return self.messages[-1][1] if self.messages else ""
        return self.completion if self.kind == "pair" else self.text

    def content(self) -> str:
        """All text of the example: what dedupe and the length filters look at."""
        if self.kind == "chat":
            return "\n".join(content for _, content in self.messages)
        if self.kind == "pair":
            return self.prompt + "\n" + self.completion
        return self.text


def column(columns: ColumnMapping | None, field: str) -> str:
    mapped = getattr(columns, field, None) if columns else None
    return mapped or field


def detect_format(row: Row, columns: ColumnMapping | None) -> Format:
    """The first layout whose required columns the first row has (preference, chat, alpaca, completion, text)."""
    for fmt, fields in _REQUIRED.items():
        if all(column(columns, f) in row.data for f in fields):
            return fmt  # type: ignore[return-value]
    expected = "; ".join(f"{fmt}: {', '.join(fields)}" for fmt, fields in _REQUIRED.items())
    raise InputError(
        f"{row.where()}: cannot tell the dataset format from columns {sorted(row.data)}; expected one of "
        f"({expected}); set spec.dataset.format and spec.dataset.columns"
    )


def _string(row: Row, columns: ColumnMapping | None, field: str, required: bool = True) -> str:
    name = column(columns, field)
    value = row.data.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise InputError(f"{row.where()}: field '{name}' is missing (needed by this format)")
        return ""
    if not isinstance(value, str):
        raise InputError(f"{row.where()}: field '{name}' must be a string, got {type(value).__name__}")
    return value


QUOTE_LIMIT = 80


def _quote(value: Any) -> str:
    """A value from the user's data in a message: repr'd, and cut so one bad row cannot flood the status."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 3] + "..."


def messages_of(row: Row, name: str, last_from_assistant: bool = True) -> tuple[tuple[str, str], ...]:
    """The {role, content} list in column `name`, each message checked; the first bad one is named."""
    value: Any = row.data.get(name)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise InputError(f"{row.where()}: field '{name}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(
                f"{row.where()}: {name}[{index}] must be an object with role ({'/'.join(ROLES)}) and string content"
                f" (got {_quote(message)})"
            )
        if message.get("role") not in ROLES:
            raise InputError(
                f"{row.where()}: {name}[{index}] must be an object with role ({'/'.join(ROLES)}) and string content;"
                f" its role is {_quote(message.get('role'))}"
            )
        messages.append((message["role"], message["content"]))
    if last_from_assistant and messages[-1][0] != "assistant":
        raise InputError(
            f"{row.where()}: the last message of '{name}' must be from the assistant (the training target)"
        )
    return tuple(messages)


def normalise(row: Row, fmt: Format, columns: ColumnMapping | None) -> Example:
    if fmt == "chat":
        return Example(kind="chat", messages=messages_of(row, column(columns, "messages")))
    if fmt == "alpaca":
        instruction = _string(row, columns, "instruction")
        context = _string(row, columns, "input", required=False)
        prompt = f"{instruction}\n\n{context}" if context else instruction
        return Example(kind="pair", prompt=prompt, completion=_string(row, columns, "output"))
    if fmt == "completion":
        return Example(
            kind="pair", prompt=_string(row, columns, "prompt"), completion=_string(row, columns, "completion")
        )
    return Example(kind="text", text=_string(row, columns, "text"))
