"""Raw documents -> a stream of blocks (headings and paragraphs), one document at a time, never whole in memory.

Readers, chosen for working offline with no model downloads: plain text and markdown line by line (UTF-8,
checked in a first streaming pass so a bad byte is named by its line before anything is used), HTML with the
standard library's incremental parser, PDF with pypdf page by page (the text layer: no OCR, no layout model, so
a scanned page reads as empty), docx with python-docx (its XML is parsed whole: docx files are small), and
JSONL with a `text` field per line. A failure is a `DocumentError` naming the document and where in it.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from finetune_operator.api.dataset import DOCUMENT_TYPES

READ_BYTES = 1 << 20
PAGE_CHARS = 3000
"""A page of a document that has none (text, markdown, HTML, docx, JSONL): what pages/s counts."""
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class DocumentError(Exception):
    """A document that cannot be used: `reason` is Unreadable, Empty, NotUtf8 or Unsupported."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    """A heading or a paragraph, with where it lies (`line 12`, `page 3`); or a marker: `page` (a PDF page
    ended: counted, not a section boundary) or `break` (a JSONL record ended: the next one is a new section)."""

    kind: Literal["heading", "paragraph", "page", "break"]
    text: str
    place: str
    level: int = 0


def check_utf8(path: Path) -> None:
    """Raise NotUtf8 naming the line of the first byte that is not UTF-8, reading 1 MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while piece := handle.read(READ_BYTES):
            try:
                decoder.decode(piece)
            except UnicodeDecodeError as error:
                line += piece[: error.start].count(b"\n")
                raise DocumentError(
                    "NotUtf8", f"line {line}: {error.reason} (byte {error.object[error.start]:#x}); save it as UTF-8"
                ) from None
            line += piece.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise DocumentError("NotUtf8", f"line {line}: the file ends inside a character ({error.reason})") from None


def _text_blocks(path: Path, markdown: bool) -> Iterator[Block]:
    check_utf8(path)
    paragraph: list[str] = []
    start = 0
    fence = False
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if markdown and line.startswith("```"):
                fence = not fence
                continue
            heading = _HEADING.match(line) if markdown and not fence else None
            if heading or not line:
                if paragraph:
                    yield Block("paragraph", " ".join(paragraph), f"line {start}")
                    paragraph = []
                if heading:
                    yield Block("heading", heading.group(2), f"line {number}", len(heading.group(1)))
                continue
            if not paragraph:
                start = number
            paragraph.append(line)
    if paragraph:
        yield Block("paragraph", " ".join(paragraph), f"line {start}")


class _Html(HTMLParser):
    """Collects headings (h1-h6) and paragraphs (p, li, td, pre, blockquote, dd, dt) as they close."""

    BLOCKS = frozenset({"p", "li", "td", "th", "pre", "blockquote", "dd", "dt", "div", "section", "article"})
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.text: list[str] = []
        self.skipping = 0
        self.heading = 0

    def _flush(self) -> None:
        text = " ".join(" ".join(self.text).split())
        self.text = []
        if text:
            place = f"line {self.getpos()[0]}"
            kind: Literal["heading", "paragraph"] = "heading" if self.heading else "paragraph"
            self.blocks.append(Block(kind, text, place, self.heading))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = int(tag[1])
        elif tag in self.BLOCKS or tag == "br":
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = 0
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.text.append(data)


def _html_blocks(path: Path) -> Iterator[Block]:
    check_utf8(path)
    parser = _Html()
    with path.open(encoding="utf-8") as handle:
        while piece := handle.read(READ_BYTES):
            parser.feed(piece)
            yield from parser.blocks
            parser.blocks = []
    parser.close()
    parser._flush()
    yield from parser.blocks


def _pdf_blocks(path: Path) -> Iterator[Block]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        pages = len(reader.pages)
    except (PyPdfError, ValueError, KeyError, OSError) as error:
        raise DocumentError("Unreadable", f"not a readable PDF: {error}") from None
    for number in range(pages):
        try:
            text = reader.pages[number].extract_text() or ""
        except (PyPdfError, ValueError, KeyError, TypeError) as error:
            raise DocumentError("Unreadable", f"page {number + 1}: {error}") from None
        paragraph: list[str] = []
        for raw in [*text.splitlines(), ""]:
            line = raw.strip()
            if line:
                paragraph.append(line)
            elif paragraph:
                yield Block("paragraph", " ".join(paragraph), f"page {number + 1}")
                paragraph = []
        yield Block("page", "", f"page {number + 1}")


def _docx_blocks(path: Path) -> Iterator[Block]:
    from docx import Document
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = Document(str(path))
    except (PackageNotFoundError, ValueError, KeyError, OSError) as error:
        raise DocumentError("Unreadable", f"not a readable .docx: {error}") from None
    for number, paragraph in enumerate(document.paragraphs, 1):
        text = " ".join(paragraph.text.split())
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith("Heading") or style == "Title":
            level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
            yield Block("heading", text, f"paragraph {number}", level)
        else:
            yield Block("paragraph", text, f"paragraph {number}")


def _jsonl_blocks(path: Path, problems: list[str]) -> Iterator[Block]:
    check_utf8(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                problems.append(f"line {number}: not a JSON object")
                continue
            if not isinstance(text, str):
                problems.append(f"line {number}: no string field 'text'")
                continue
            yield Block("paragraph", " ".join(text.split()), f"line {number}")
            yield Block("break", "", f"line {number}")


def read_blocks(path: Path, problems: list[str]) -> Iterator[Block]:
    """The document's blocks, lazily. `problems` collects bad records of a JSONL file, which are skipped (the
    good lines beside them are used). Raises DocumentError for a document that cannot be used at all."""
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_TYPES:
        raise DocumentError("Unsupported", f"{suffix or 'no extension'}: not one of {', '.join(DOCUMENT_TYPES)}")
    if path.stat().st_size == 0:
        raise DocumentError("Empty", "the file is empty")
    if suffix in (".txt", ".md", ".markdown"):
        return _text_blocks(path, markdown=suffix != ".txt")
    if suffix in (".html", ".htm"):
        return _html_blocks(path)
    if suffix == ".pdf":
        return _pdf_blocks(path)
    if suffix == ".docx":
        return _docx_blocks(path)
    return _jsonl_blocks(path, problems)
