"""PowerPoint presentations (.pptx) with python-pptx: one document per slide with text.

A slide's text is its title as a ``#`` heading, then the text of its other shapes in
reading order (top to bottom, then left to right; grouped shapes where their group sits),
one line per paragraph (indented list levels as ``- `` items), tables as
``cell | cell`` rows, and its speaker notes last, after a ``Notes:`` line. Pictures,
charts and media give nothing (no OCR).

Metadata: ``slide`` (its number, from 1, hidden slides counted as PowerPoint counts them),
``slide_count``, and ``slide_title`` when the slide has a title. The document title is the
presentation's title property, else the first slide title, else the file name.

The archive passes :func:`connectors.office.check_zip` before python-pptx opens it.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from connectors.office import check_zip
from connectors.parsers import Parsed, normalize_text, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

if TYPE_CHECKING:
    from pptx.shapes.base import BaseShape
    from pptx.slide import Slide
    from pptx.text.text import TextFrame

_SPACES = re.compile(r"\s+")
_CONTENT_TYPE = re.compile(r"content type is '([^']+)'")
#: Titles PowerPoint and its templates write when the author gave none.
_MEANINGLESS_TITLES = frozenset({"", "powerpoint presentation", "presentation", "untitled"})


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _position(shape: BaseShape) -> tuple[int, int]:
    # Placeholders inherit a missing position from their layout; other shapes without one
    # (rare, damaged files) go last.
    top, left = shape.top, shape.left
    return (top if top is not None else 2**62, left if left is not None else 2**62)


def _frame_lines(frame: TextFrame) -> Iterator[str]:
    for paragraph in frame.paragraphs:
        text = _collapse(paragraph.text)
        if text:
            level = paragraph.level or 0
            yield "  " * (level - 1) + "- " + text if level > 0 else text


def _shape_lines(shapes: Iterable[BaseShape]) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in sorted(shapes, key=_position):
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_lines(shape.shapes)  # type: ignore[attr-defined]
        elif getattr(shape, "has_table", False):
            yield ""
            for row in shape.table.rows:  # type: ignore[attr-defined]
                cells = [_collapse(cell.text) for cell in row.cells]
                if any(cells):
                    yield " | ".join(cells)
            yield ""
        elif shape.has_text_frame:
            yield from _frame_lines(shape.text_frame)  # type: ignore[attr-defined]


def _slide_text(slide: Slide) -> tuple[str, str]:
    """The slide's text and its title ("" when it has none)."""
    title_shape = slide.shapes.title
    title = _collapse(title_shape.text_frame.text) if title_shape is not None else ""
    others = [s for s in slide.shapes if title_shape is None or s.shape_id != title_shape.shape_id]
    lines = [f"# {title}", ""] if title else []
    lines.extend(_shape_lines(others))
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        note_lines = list(_frame_lines(notes)) if notes is not None else []
        if note_lines:
            lines.extend(["", "Notes:", *note_lines])
    text = re.sub(r"\n{3,}", "\n\n", normalize_text("\n".join(lines)))
    return text, title


def parse_pptx(data: bytes, stem: str) -> list[Parsed]:
    """One document per slide that has text; see the module docstring."""
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    check_zip(data, "PPTX")
    try:
        presentation = Presentation(io.BytesIO(data))
        slides = list(presentation.slides)
    except zipfile.BadZipFile as e:
        raise IngestError("malformed PPTX: not a ZIP archive") from e
    except (PackageNotFoundError, KeyError) as e:
        raise IngestError(f"malformed PPTX: {short_message(e)}") from e
    except (ValueError, AttributeError, TypeError) as e:
        # python-pptx reads the parts it expects without checking them: a package of another
        # kind (a Word file renamed) fails with whatever the missing part's absence raises.
        kind = _CONTENT_TYPE.search(str(e))
        shown = f" (its main part is {kind.group(1)})" if kind else ""
        raise IngestError(f"malformed PPTX: not a PowerPoint presentation{shown}") from e

    read = [_slide_text(slide) for slide in slides]
    core_title = _collapse(presentation.core_properties.title or "")
    if core_title.lower() in _MEANINGLESS_TITLES:
        core_title = ""
    title = core_title or next((t for _, t in read if t), "") or stem
    parsed = []
    for number, (text, slide_title) in enumerate(read, 1):
        extra: dict[str, MetadataValue] = {"slide": number, "slide_count": len(slides)}
        if slide_title:
            extra["slide_title"] = slide_title
        parsed.append(Parsed(text, title, "markdown", extra))
    return parsed
