"""Cutting documents into chunks sized in the embedding model's own tokens.

Plain text goes through langchain-text-splitters' recursive splitter (paragraphs, lines,
sentences, words, characters). Markdown is cut at its headings first: each section is a chunk
of its own, only a section longer than the chunk size is split further, and each chunk
records the heading path of its section. Sections are not packed together, however small:
a chunk holding the end of one section and a small next one would be cited, and found, under
the first one's heading only (measured on the guide in data/: packing lost questions whose
answer is a short section).
No chunk is longer than the model's maximum sequence length: a model such as
all-MiniLM-L6-v2 silently drops everything after 256 word pieces, so a chunk that the
splitter's estimate lets through too long is cut again.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rag.errors import ConfigError
from rag.types import Chunk, Document, Metadata

CHUNKER_VERSION = 2  # 2: Markdown sections are never packed together

# Regular expressions, tried in order; each split keeps the text intact (a zero-width or
# whitespace separator goes to the start of the next piece and is stripped at chunk edges).
_TEXT_SEPARATORS = [r"\n[ \t]*\n", r"\n", r"(?<=[.!?])\s+", r"(?<=[;:,])\s+", r"\s+", ""]
#: Chunks whose estimated size is within this many tokens of the limit are counted exactly.
_EXACT_MARGIN = 16
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")


@dataclass(frozen=True, slots=True)
class ChunkerSettings:
    """How text is cut; recorded with each collection."""

    chunk_size: int = 200
    chunk_overlap: int = 32

    def to_json(self) -> dict[str, int | str]:
        return {
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "version": CHUNKER_VERSION,
        }


class Chunker:
    """Splits documents into chunks of at most ``max_tokens`` model tokens.

    ``count_tokens`` is the embedder's token counter (content tokens, no special tokens);
    ``tokenizer_id`` names it in the chunk ids, because the same settings cut differently
    with another tokenizer.
    """

    def __init__(
        self,
        settings: ChunkerSettings,
        *,
        count_tokens: Callable[[Sequence[str]], list[int]],
        max_tokens: int,
        tokenizer_id: str,
        token_starts: Callable[[str], Sequence[int]] | None = None,
    ) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        if max_tokens < 16:
            raise ConfigError(f"the embedder allows only {max_tokens} tokens per text")
        self.settings = settings
        self.size = min(settings.chunk_size, max_tokens)
        self.overlap = min(settings.chunk_overlap, self.size // 2)
        self.max_tokens = max_tokens
        self._count = count_tokens
        self._token_starts = token_starts
        self._doc: str | None = None  # the text being split, with its token start offsets
        self._starts: Sequence[int] = ()
        self._cursor = 0
        self.fingerprint = f"v{CHUNKER_VERSION}/{self.size}/{self.overlap}/{tokenizer_id}"

        def length(text: str) -> int:
            return self._span_tokens(text)

        def splitter(
            separators: list[str], size: int, overlap: int
        ) -> RecursiveCharacterTextSplitter:
            return RecursiveCharacterTextSplitter(
                separators=separators,
                is_separator_regex=True,
                keep_separator="start",
                chunk_size=size,
                chunk_overlap=overlap,
                length_function=length,
                strip_whitespace=True,
            )

        self._make = splitter
        self._text = splitter(_TEXT_SEPARATORS, self.size, self.overlap)

    @classmethod
    def for_embedder(cls, settings: ChunkerSettings, embedder: Any) -> Chunker:
        """A chunker sized in ``embedder``'s tokens, with its fast offset counter if any."""
        return cls(
            settings,
            count_tokens=embedder.count_tokens,
            max_tokens=embedder.max_tokens,
            tokenizer_id=embedder.id,
            token_starts=getattr(embedder.count_tokens, "token_starts", None),
        )

    def _span_tokens(self, piece: str) -> int:
        """Tokens in ``piece``. The splitter asks this of every piece it considers (dozens
        per document); tokenising each would dominate chunking, so the whole text is
        tokenised once and a piece's count is read from the token offsets of the place it
        occupies. A piece that a cut made mid-word may count one token off; the exact check
        on the final chunks (:meth:`_enforce_limit`) keeps the limit."""
        doc = self._doc
        if doc is None:
            return self._count([piece])[0]
        at = doc.find(piece, self._cursor)
        if at < 0:
            at = doc.find(piece)
            if at < 0:
                return self._count([piece])[0]
        self._cursor = at
        starts = self._starts
        return bisect.bisect_left(starts, at + len(piece)) - bisect.bisect_left(starts, at)

    def _final_counts(self, texts: list[str]) -> list[int]:
        """Token counts of finished chunks: exact wherever the limit is at stake. The offset
        estimate is exact for a chunk that starts and ends between words and at most a token
        or two off otherwise, so only chunks within a margin of the limit are re-tokenised."""
        if self._doc is None:
            return self._count(texts)
        counts = [self._span_tokens(t) for t in texts]
        near = [i for i, n in enumerate(counts) if n > self.max_tokens - _EXACT_MARGIN]
        for i, n in zip(near, self._count([texts[i] for i in near]), strict=True):
            counts[i] = n
        return counts

    def split_text(self, text: str, *, markdown: bool = False) -> list[tuple[str, int]]:
        """``(chunk_text, start_offset)`` pairs, each within the token limit."""
        if self._token_starts is None:
            return self._split(text, markdown)
        self._doc, self._starts, self._cursor = text, self._token_starts(text), 0
        try:
            return self._split(text, markdown)
        finally:
            self._doc, self._starts = None, ()

    def _split(self, text: str, markdown: bool) -> list[tuple[str, int]]:
        if not markdown:
            return self._enforce_limit(_with_offsets(text, self._text.split_text(text)))
        # Markdown: cut at headings (outside code fences) first; a section within the size
        # is one chunk, a longer one is split with the recursive splitter.
        pieces: list[tuple[str, int]] = []
        sections = [(t, s) for t, s in _sections(text) if t.strip()]
        counts = self._count([t for t, _ in sections])
        for (section, start), n in zip(sections, counts, strict=True):
            if n <= self.size:
                pieces.append((section, start))
            else:
                parts = _with_offsets(section, self._text.split_text(section))
                pieces.extend((t, start + s) for t, s in parts)
        return self._enforce_limit(self._attach_lone_headings(pieces))

    def _attach_lone_headings(self, pieces: list[tuple[str, int]]) -> list[tuple[str, int]]:
        # A piece that is only headings (a parent section with no text of its own, or a
        # heading the splitter cut off a long section) is put in front of the next chunk
        # when the two fit together.
        out: list[tuple[str, int]] = []
        i = 0
        while i < len(pieces):
            text, start = pieces[i]
            if i + 1 < len(pieces) and all(
                _HEADING.match(ln) for ln in text.split("\n") if ln.strip()
            ):
                nxt, _ = pieces[i + 1]
                joined = f"{text}\n\n{nxt}"
                if self._count([joined])[0] <= self.max_tokens:
                    out.append((joined, start))
                    i += 2
                    continue
            out.append((text, start))
            i += 1
        return out

    def _enforce_limit(self, pieces: list[tuple[str, int]]) -> list[tuple[str, int]]:
        counts = self._final_counts([t for t, _ in pieces])
        if all(c <= self.max_tokens for c in counts):
            return pieces
        out: list[tuple[str, int]] = []
        for (text, start), n in zip(pieces, counts, strict=True):
            if n <= self.max_tokens:
                out.append((text, start))
                continue
            # The splitter's length estimate adds up its pieces; the joined text can tokenise
            # longer. Cut this one again with a proportionally smaller target.
            size = max(8, int(self.max_tokens * self.max_tokens / n) - 4)
            sub = self._make(_TEXT_SEPARATORS, size, 0).split_text(text)
            out.extend(self._enforce_limit([(t, start + s) for t, s in _with_offsets(text, sub)]))
        return out

    def chunk(self, docs: Sequence[Document]) -> list[Chunk]:
        """Chunks of the documents of one source (a file, or the pages of one PDF), with ids
        derived from the source, the chunker settings and the chunk's text."""
        chunks: list[Chunk] = []
        seen: Counter[str] = Counter()
        for doc in docs:
            markdown = doc.format == "markdown"
            headings = _heading_index(doc.text) if markdown else None
            for text, start in self.split_text(doc.text, markdown=markdown):
                meta: Metadata = dict(doc.metadata)
                meta.setdefault("source", doc.source)
                if headings is not None:
                    path = headings.path_at(start, text)
                    if path:
                        meta["heading"] = path
                meta["chunk_index"] = len(chunks)
                key = f"{doc.source}\x1f{self.fingerprint}\x1f{text}"
                seen[key] += 1
                chunks.append(Chunk(id=chunk_id(key, seen[key]), text=text, metadata=meta))
        return chunks


def _sections(text: str) -> list[tuple[str, int]]:
    """Markdown text cut before each heading line that is not inside a code fence."""
    cuts = [0]
    in_fence = False
    pos = 0
    for line in text.split("\n"):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        elif not in_fence and pos and _HEADING.match(line):
            cuts.append(pos)
        pos += len(line) + 1
    cuts.append(len(text))
    return [(text[a:b].strip("\n"), a) for a, b in itertools.pairwise(cuts)]


def _with_offsets(text: str, parts: list[str]) -> list[tuple[str, int]]:
    """Each part with its character offset in ``text`` (parts are in order, may overlap)."""
    out: list[tuple[str, int]] = []
    cursor = 0
    for part in parts:
        if not part.strip():
            continue
        at = text.find(part, cursor)
        if at < 0:
            at = text.find(part)
        at = max(at, 0)
        out.append((part, at))
        cursor = at + 1
    return out


def chunk_id(key: str, occurrence: int) -> str:
    """A UUID-shaped id (every backend accepts those) from the chunk's identity."""
    digest = hashlib.sha256(f"{key}\x1f{occurrence}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


class _HeadingIndex:
    def __init__(self, offsets: list[int], paths: list[str]) -> None:
        self.offsets = offsets
        self.paths = paths

    def path_at(self, start: int, text: str) -> str:
        # The heading in force where the chunk's body starts: a chunk that begins with
        # heading lines (a section's own, or a parent's that has no text of its own) belongs
        # under the last of them.
        probe = start
        for line in text.split("\n"):
            if line.strip() and not _HEADING.match(line):
                break
            probe += len(line) + 1
        i = bisect.bisect_right(self.offsets, probe - 1) - 1
        return self.paths[i] if i >= 0 else ""


def _heading_index(text: str) -> _HeadingIndex:
    offsets: list[int] = []
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    in_fence = False
    pos = 0
    for line in text.split("\n"):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADING.match(line)):
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, m.group(2).strip()))
            offsets.append(pos)
            paths.append(" > ".join(title for _, title in stack))
        pos += len(line) + 1
    return _HeadingIndex(offsets, paths)
