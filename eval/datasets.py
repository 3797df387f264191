"""Readers for the evaluation datasets' public formats.

* BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
  ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; a header line).
* SQuAD v1.1 JSON (XQuAD uses it): articles with a title and paragraphs, each paragraph a
  context with questions and their gold answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import ConfigError


@dataclass
class BeirDataset:
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def doc_text(self, doc_id: str) -> str:
        """Title and text joined as BEIR's dense-retrieval evaluation joins them."""
        doc = self.corpus[doc_id]
        title = doc.get("title", "").strip()
        return f"{title} {doc['text']}".strip() if title else doc["text"]


def load_beir(folder: Path, *, split: str = "test") -> BeirDataset:
    """A BEIR dataset; only queries that have judgements in ``split`` are kept."""
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder} is not a BEIR dataset: {name} is missing")
    corpus: dict[str, dict[str, str]] = {}
    for row in _jsonl(folder / "corpus.jsonl"):
        corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row.get("text") or ""}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for n, line in enumerate(f):
            parts = line.strip().split("\t")
            if n == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) < 3:
                continue
            qid, did, score = parts[0], parts[1], int(parts[2])
            qrels.setdefault(qid, {})[did] = score
    queries = {
        str(r["_id"]): r["text"] for r in _jsonl(folder / "queries.jsonl") if str(r["_id"]) in qrels
    }
    missing = set(qrels) - set(queries)
    if missing:
        raise ConfigError(f"{len(missing)} judged queries are missing from queries.jsonl")
    return BeirDataset(corpus, queries, qrels)


@dataclass
class SquadQuestion:
    id: str
    question: str
    answers: list[str]
    article: str
    paragraph: int  # index of the paragraph in the whole file


@dataclass
class SquadDataset:
    articles: list[str] = field(default_factory=list)
    #: (article title, context) per paragraph, in file order.
    paragraphs: list[tuple[str, str]] = field(default_factory=list)
    questions: list[SquadQuestion] = field(default_factory=list)


def load_squad(path: Path) -> SquadDataset:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{path} is not a SQuAD-format file: {e}") from e
    out = SquadDataset()
    for article in data:
        title = article["title"]
        out.articles.append(title)
        for para in article["paragraphs"]:
            index = len(out.paragraphs)
            out.paragraphs.append((title, para["context"]))
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                out.questions.append(SquadQuestion(qa["id"], qa["question"], answers, title, index))
    return out


def slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_") or "article"


def write_articles(ds: SquadDataset, folder: Path) -> dict[str, Path]:
    """One markdown file per article (title heading, paragraphs), as a user would have them."""
    folder.mkdir(parents=True, exist_ok=True)
    by_article: dict[str, list[str]] = {}
    for title, context in ds.paragraphs:
        by_article.setdefault(title, []).append(context)
    paths = {}
    for title, paras in by_article.items():
        p = folder / f"{slug(title)}.md"
        p.write_text(
            f"# {title.replace('_', ' ')}\n\n" + "\n\n".join(paras) + "\n", encoding="utf-8"
        )
        paths[title] = p
    return paths


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds exactly that: an unchanged file
    keeps its mtime, so re-ingesting the folder costs nothing."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    path.write_text(text, encoding="utf-8")


def write_paragraphs(ds: SquadDataset, folder: Path) -> list[str]:
    """One text file per paragraph (rewritten only when its text changed); returns each
    paragraph's absolute path, in dataset order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (title, context) in enumerate(ds.paragraphs):
        path = folder / f"p{i:04d}_{slug(title)[:40]}.txt"
        write_if_changed(path, context.strip() + "\n")
        paths.append(str(path.resolve()))
    return paths


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
