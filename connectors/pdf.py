"""PDF text extraction with pypdf: one document per page that has text."""

from __future__ import annotations

import io
import logging
import threading
from typing import TYPE_CHECKING

from connectors.parsers import Parsed, normalize_text, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

if TYPE_CHECKING:
    from pypdf import PdfReader

logger = logging.getLogger(__name__)

# Titles that PDF producers write when the author gave none.
_MEANINGLESS_TITLES = frozenset(
    {"", "untitled", "untitled document", "document", "title", "none", "null", "unknown"}
)
_FILE_NAME_ENDINGS = (".doc", ".docx", ".pdf", ".odt", ".rtf", ".txt", ".tex", ".dvi", ".indd")
_WORD_PREFIX = "microsoft word - "

_quiet_lock = threading.Lock()
_quieted = False


class _DebugForwarder(logging.Handler):
    """Re-emits pypdf's records at DEBUG on this module's logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break ingestion
            message = str(record.msg)
        logger.debug("pypdf (%s): %s", record.name, message)


def _quiet_pypdf() -> None:
    """Route pypdf's warnings ("EOF marker not found", ...) to DEBUG, once per process.

    pypdf logs every robustness fix it applies to a damaged file as a WARNING on the
    "pypdf" logger; a user ingesting a folder cannot act on those, and a failure that
    matters is reported as an IngestError anyway. Done once and for good rather than
    around each call, so that concurrent loads in threads do not race on logger state.
    """
    global _quieted
    with _quiet_lock:
        if _quieted:
            return
        pypdf_logger = logging.getLogger("pypdf")
        pypdf_logger.addHandler(_DebugForwarder())
        pypdf_logger.propagate = False
        _quieted = True


def _meaningful_title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception as e:  # broken /Info dictionaries are common; the title is optional
        logger.debug("unreadable PDF metadata: %s", e)
        return None
    if not isinstance(title, str):
        return None
    title = " ".join(title.replace("\x00", "").split())
    if title.lower().startswith(_WORD_PREFIX):
        title = title[len(_WORD_PREFIX) :].strip()
    lowered = title.lower()
    if lowered in _MEANINGLESS_TITLES or lowered.endswith(_FILE_NAME_ENDINGS):
        return None
    return title


def _decrypt(reader: PdfReader) -> None:
    from pypdf.errors import DependencyError

    try:
        result = reader.decrypt("")
    except DependencyError as e:
        raise IngestError("encrypted PDF (AES); reading it needs the package 'cryptography'") from e
    if not result:
        raise IngestError("encrypted PDF; a password is required")


def parse_pdf(data: bytes, stem: str) -> list[Parsed]:
    """Extract the text of each page; pages without text are left out.

    Raises ``IngestError`` for encrypted, malformed and text-less (scanned) PDFs.
    """
    _quiet_pypdf()
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt(reader)
        page_count = len(reader.pages)
    except IngestError:
        raise
    except FileNotDecryptedError as e:
        raise IngestError("encrypted PDF; a password is required") from e
    except Exception as e:  # whatever stops pypdf from opening the file, it is damaged
        raise IngestError(f"malformed PDF: {short_message(e)}") from e
    if page_count == 0:
        raise IngestError("malformed PDF: no pages")

    title = _meaningful_title(reader) or stem
    parsed: list[Parsed] = []
    failures: list[Exception] = []
    for number in range(1, page_count + 1):
        try:
            text = reader.pages[number - 1].extract_text()
        except Exception as e:  # one damaged page should not cost the others
            logger.debug("PDF page %d: %s", number, e)
            failures.append(e)
            continue
        text = normalize_text(text or "")
        if text.strip():
            extra: dict[str, MetadataValue] = {"page": number, "page_count": page_count}
            parsed.append(Parsed(text, title, "text", extra))
    if not parsed:
        if len(failures) == page_count:
            raise IngestError(f"malformed PDF: {short_message(failures[0])}") from failures[0]
        raise IngestError("no extractable text (scanned PDF? OCR is not supported)")
    return parsed
