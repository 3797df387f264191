"""E-mail messages (.eml, RFC 5322 / MIME) with the standard library's :mod:`email`.

The text is the message body: its ``text/plain`` part when that holds text, else its
``text/html`` part converted by :func:`connectors.htmltext.html_to_text` (the part a mail
program would show, found by :meth:`email.message.EmailMessage.get_body`). Attachments are
not parsed; their file names are listed in the ``attachments`` metadata, comma-separated.

The title is the subject (encoded words decoded), else the file name. Metadata: ``from``
and ``to`` (the header values, decoded), ``date`` (ISO 8601 when the ``Date`` header
parses, else as written), ``attachments``. A message with no mail headers at all is not
taken for one: Python's parser accepts any bytes, and would otherwise index a binary file
as a message body.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage, Message

from connectors.parsers import Parsed, decode_text, normalize_text
from rag.errors import IngestError
from rag.types import MetadataValue

#: Headers of which a message holds at least one.
_MAIL_HEADERS = ("from", "to", "subject", "date", "message-id", "received", "mime-version")
_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a header the policy cannot parse is as good as absent
        return ""
    return _collapse(str(value)) if value is not None else ""


def _date(message: Message) -> str:
    raw = _header(message, "date")
    if not raw:
        return ""
    try:
        return email.utils.parsedate_to_datetime(raw).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return raw


def _content(part: Message) -> str:
    """A text part's content as a string, whatever its declared charset."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, KeyError, ValueError, UnicodeError, AssertionError):
        pass  # an unknown or lying charset: detect the encoding of the bytes below
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return decode_text(payload)[0]
    except IngestError:  # binary bytes in a text part: keep what reads as text
        return payload.decode("utf-8", "replace")


def _body(message: EmailMessage) -> tuple[str, str]:
    """The body's text and its format: "text", or "markdown" when converted from HTML."""
    from connectors.htmltext import html_to_text

    plain = message.get_body(preferencelist=("plain",))
    if plain is not None:
        text = normalize_text(_content(plain))
        if text.strip():
            return text, "text"
    html = message.get_body(preferencelist=("html",))
    if html is not None:
        return html_to_text(_content(html))[0], "markdown"
    return "", "text"


def _attachments(message: EmailMessage) -> list[str]:
    names = []
    for part in message.iter_attachments():
        name = part.get_filename()
        names.append(_collapse(name) if name else part.get_content_type())
    return names


def parse_eml(data: bytes, stem: str) -> list[Parsed]:
    """The body, subject, sender, recipients and date of one message."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not any(_header(message, name) for name in _MAIL_HEADERS):
        raise IngestError("malformed EML: no mail headers (From, To, Subject, Date)")
    if not isinstance(message, EmailMessage):  # policy.default always makes one
        raise IngestError("malformed EML: not a MIME message")
    extra: dict[str, MetadataValue] = {}
    for key, value in (
        ("from", _header(message, "from")),
        ("to", _header(message, "to")),
        ("date", _date(message)),
        ("attachments", ", ".join(_attachments(message))),
    ):
        if value:
            extra[key] = value
    text, form = _body(message)
    return [Parsed(text, _header(message, "subject") or stem, form, extra)]
