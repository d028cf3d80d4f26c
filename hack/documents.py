"""Raw documents for the Dataset tests, the demo and the benchmark, written on the spot: text, markdown
with headings, HTML, a real multi-page PDF (fpdf2), a .docx (python-docx) and JSONL, plus the bad ones
(a corrupt PDF, an empty file, a Latin-1 text file) and a large text file written in a streaming way.

The prose is generated from templates with numbers and names, so every section differs and the template
generator has definitions, headings and numbers to ask about; it means nothing beyond that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

TOPICS = ("returns", "shipping", "warranty", "invoices", "accounts", "support", "privacy", "repairs")
CITIES = ("Rotterdam", "Lyon", "Porto", "Gdansk", "Bologna", "Tampere", "Graz", "Cork")


def section(topic: str, number: int) -> tuple[str, list[str]]:
    """(heading, paragraphs) of one section; `number` makes each one different."""
    city = CITIES[number % len(CITIES)]
    days = 10 + number % 50
    fee = 5 + number % 40
    heading = f"{topic.capitalize()} rule {number}"
    paragraphs = [
        f"A {topic} request is a written message that asks the company in {city} to act within {days} days. "
        f"Every {topic} request receives a reference number starting with {number:05d}.",
        f"The {topic} desk in {city} answers requests between 08:00 and 17:00 on working days. "
        f"A handling fee of {fee} euros applies when the request arrives after the deadline of {days} days.",
        f"Customers who disagree with a {topic} decision may appeal to the regional office in {city} "
        f"within {days + 7} days, quoting the reference number {number:05d}.",
    ]
    return heading, paragraphs


def sections(count: int, start: int = 0) -> Iterator[tuple[str, list[str]]]:
    for number in range(start, start + count):
        yield section(TOPICS[number % len(TOPICS)], number)


def write_text(path: Path, count: int = 4, start: int = 0) -> Path:
    path.write_text("\n\n".join(p for _, paragraphs in sections(count, start) for p in paragraphs) + "\n")
    return path


def write_markdown(path: Path, count: int = 4, start: int = 100) -> Path:
    parts = ["# Customer handbook\n"]
    for heading, paragraphs in sections(count, start):
        parts.append(f"## {heading}\n")
        parts += [p + "\n" for p in paragraphs]
    path.write_text("\n".join(parts))
    return path


def write_html(path: Path, count: int = 4, start: int = 200) -> Path:
    body = "".join(
        f"<h2>{heading}</h2>" + "".join(f"<p>{p}</p>" for p in paragraphs)
        for heading, paragraphs in sections(count, start)
    )
    path.write_text(
        "<!doctype html><html><head><title>Policies</title><style>p{margin:0}</style>"
        f"<script>var ignored = 1;</script></head><body><h1>Policies</h1>{body}</body></html>"
    )
    return path


def write_pdf(path: Path, pages: int = 3, start: int = 300) -> Path:
    """A real PDF with a text layer, one section per page."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for heading, paragraphs in sections(pages, start):
        pdf.add_page()
        pdf.multi_cell(0, 6, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    pdf.output(str(path))
    return path


def write_docx(path: Path, count: int = 3, start: int = 400) -> Path:
    from docx import Document

    document = Document()
    document.add_heading("Service terms", level=1)
    for heading, paragraphs in sections(count, start):
        document.add_heading(heading, level=2)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    document.save(str(path))
    return path


def write_jsonl(path: Path, count: int = 3, start: int = 500) -> Path:
    path.write_text("".join(json.dumps({"text": " ".join(p)}) + "\n" for _, p in sections(count, start)))
    return path


def write_documents(folder: Path) -> dict[str, Path]:
    """One good document of every supported type, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "notes.txt": write_text(folder / "notes.txt"),
        "handbook.md": write_markdown(folder / "handbook.md"),
        "policies.html": write_html(folder / "policies.html"),
        "terms.pdf": write_pdf(folder / "terms.pdf"),
        "service.docx": write_docx(folder / "service.docx"),
        "records.jsonl": write_jsonl(folder / "records.jsonl"),
    }


def write_bad_documents(folder: Path) -> dict[str, str]:
    """Documents that cannot be used, by name, with the reason status should give each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ntruncated")
    (folder / "blank.md").write_text("")
    (folder / "latin1.txt").write_bytes("Le caf\u00e9 est servi \u00e0 8 heures.\n".encode("latin-1"))
    return {"broken.pdf": "Unreadable", "blank.md": "Empty", "latin1.txt": "NotUtf8"}


def write_large_text(path: Path, megabytes: int) -> Path:
    """A text document of about `megabytes` MB, written a section at a time (never held whole)."""
    target = megabytes * 1_000_000
    written = 0
    number = 0
    with path.open("w") as handle:
        while written < target:
            heading, paragraphs = section(TOPICS[number % len(TOPICS)], number)
            text = "\n\n".join([heading, *paragraphs]) + "\n\n"
            handle.write(text)
            written += len(text)
            number += 1
    return path
