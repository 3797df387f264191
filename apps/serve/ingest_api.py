"""``POST /v1/collections/{name}/documents``: files uploaded into a collection, then ingested
as ``rag ingest FILE...`` ingests them, answering its report.

    curl -H "Authorization: Bearer $TOKEN" -F files=@notes.md -F files=@paper.pdf \\
      http://127.0.0.1:8000/v1/collections/docs/documents

- The key needs the ``ingest`` scope and the collection (403 otherwise). Both are checked
  before the body is read: FastAPI would parse a declared multipart body (up to the
  gateway's upload limit, spooled to disk) before it asks for the key, so the form is read
  by hand here and declared in the OpenAPI schema on its own.
- Each file is saved as ``<data dir>/uploads/<collection>/<name>`` under the name the client
  gave, made safe by :func:`apps.ui.uploads.safe_name` (the Streamlit app's rules: folders
  stripped, ``..``, hidden names, control characters and unsupported types refused). A
  refused file is reported in ``failed`` with its reason and the others go on.
- The same name is the same document: uploading a file again with the same bytes is
  ``unchanged``, with other bytes ``updated`` (the Streamlit app keeps both instead).
- The saved files are ingested incrementally into the collection (created in the server's
  default store on the first upload; an existing collection of that name is used in
  whichever store holds it), through the collection the server searches, so that searches
  see the new passages at once. A file that cannot be parsed is listed in ``failed`` with
  its reason, as ``rag ingest`` lists it; the answer is still a 200.
- A second ingest of a collection while one runs (from this server or another process,
  ``rag ingest`` included) is answered 409 at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from apps.serve.errors import ApiError
from apps.serve.gateway import Caller, authenticate, check_collection
from apps.serve.openai_schema import ERROR_RESPONSES, ErrorResponse
from apps.serve.service import CollectionRef, Service
from apps.ui.uploads import UploadError, safe_name, upload_dir
from rag.errors import LockedError

if TYPE_CHECKING:
    from rag.collection import Collection

logger = logging.getLogger("rag.serve")

#: Files one request may carry, and other form fields it may have (none are read).
MAX_FILES = 100
#: The form field that carries the files (repeated, one part per file).
FIELD = "files"
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_COPY = 1 << 20


class FileOutcome(BaseModel):
    """A file that failed or was skipped, and why."""

    path: str = Field(description="where the file was saved, or the name sent when refused")
    reason: str


class IngestResponse(BaseModel):
    """What ``rag ingest --json`` prints for the uploaded files, and where they went."""

    collection: str
    store: str
    model: str | None = Field(
        description="the collection's model id (ragkit/<name>), for /v1/search and chat; "
        "null when no file could be saved and the collection does not exist"
    )
    saved: list[str] = Field(
        description="the names the files are kept under in the collection's upload folder "
        "(a new file that failed is not kept)"
    )
    files: int = Field(description="files ingested (read, or found unchanged)")
    added: int
    updated: int
    unchanged: int
    deleted: int
    failed: list[FileOutcome]
    skipped: list[FileOutcome] = Field(description="files with nothing to index")
    chunks: int = Field(description="chunks written by this ingest")
    embedded: int
    cached: int
    total_chunks: int = Field(description="chunks in the collection now")
    seconds: float
    model_seconds: float
    embed_seconds: float


_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {
                    FIELD: {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_FILES,
                        "items": {
                            "type": "string",
                            "format": "binary",
                            "contentMediaType": "application/octet-stream",
                        },
                        "description": "the files, one part each, named by their filename "
                        "(any format rag ingest reads: .md, .txt, .pdf, .docx, .pptx, "
                        ".xlsx, .html, .epub, .ipynb, .json, .jsonl, .eml, .rst, .csv)",
                    }
                },
                "additionalProperties": False,
            }
        }
    },
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: r for code, r in ERROR_RESPONSES.items() if code not in (404, 502)},
    409: {"model": ErrorResponse, "description": "the collection is being ingested already"},
}

router = APIRouter(prefix="/v1", tags=["ingest"])
Ingester = Annotated[Caller, Depends(authenticate("ingest"))]
CollectionName = Annotated[
    str, PathParam(pattern=COLLECTION_PATTERN, description="the collection (created if new)")
]


@router.post(
    "/collections/{name}/documents",
    response_model=IngestResponse,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _BODY},
)
async def upload_documents(name: CollectionName, request: Request, caller: Ingester) -> Any:
    """Upload files into the collection ``name`` and ingest them (incremental: a file sent
    again unchanged costs nothing). The answer is the ingest report."""
    check_collection(caller, name)
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "multipart/form-data":
        raise ApiError(
            400,
            f"send the files as multipart/form-data, one '{FIELD}' part each",
            code="invalid_request",
        )
    service: Service = request.app.state.service
    # Starlette answers a malformed form, or one over these limits, with a 400.
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
        uploads: list[UploadFile] = []
        for key, value in form.multi_items():
            if key != FIELD:
                raise ApiError(400, f"{key[:64]}: unsupported form field", code="invalid_request")
            if not isinstance(value, UploadFile):
                raise ApiError(
                    400,
                    f"{FIELD}: each part must be a file (with a filename)",
                    code="invalid_request",
                )
            uploads.append(value)
        if not uploads:
            raise ApiError(400, f"{FIELD}: no file was sent", code="invalid_request")
        return await run_in_threadpool(ingest_uploads, service, name, uploads)


# --- saving and ingesting ----------------------------------------------------------------------


@dataclass
class _Planned:
    upload: UploadFile
    name: str


def ingest_uploads(service: Service, name: str, uploads: list[UploadFile]) -> dict[str, Any]:
    """Saves ``uploads`` into the collection's upload folder and ingests them; the report as
    :class:`IngestResponse` describes it. Runs in a worker thread."""
    settings = service.settings
    planned, refused = _plan(uploads, settings.max_file_bytes)
    if not planned:  # nothing to save: nothing is created either
        found = _find(service, name)
        out = _empty_report()
        out.update(
            collection=name,
            store=settings.store if found is None else found.store,
            model=None if found is None else found.id,
            failed=refused,
        )
        return out
    with _exclusive(settings.data_dir, name):
        col, shared = _collection(service, name)
        try:
            saved, created = _save_all(col, planned, refused)
            report = _ingest(col, saved) if saved else _empty_report()
            store = col.settings.store
        finally:
            if not shared:
                col.close()
    # A new file that could not be ingested is not kept: the upload folder holds what the
    # collection holds (the Streamlit app ingests the whole folder).
    dropped = {f["path"] for f in report["failed"]} & created
    for path in dropped:
        Path(path).unlink(missing_ok=True)
    found = _find(service, name, store)
    report["failed"] = refused + report["failed"]
    report.update(
        collection=name,
        store=store,
        model=None if found is None else found.id,
        saved=[p.name for p in saved if os.path.realpath(p) not in dropped],
    )
    return report


def _plan(uploads: list[UploadFile], limit: int) -> tuple[list[_Planned], list[dict[str, str]]]:
    """The uploads with the safe names they will be saved under, and those refused."""
    from connectors.filesystem import SUPPORTED_SUFFIXES

    planned: list[_Planned] = []
    refused: list[dict[str, str]] = []
    for upload in uploads:
        given = upload.filename or ""
        try:
            safe = safe_name(given, SUPPORTED_SUFFIXES)
            if any(p.name == safe for p in planned):
                raise UploadError(f"{given!r}: this request holds two files named {safe!r}")
            if upload.size is not None and upload.size > limit:
                raise UploadError(
                    f"{given!r}: larger than the {_mb(limit)} limit ({_mb(upload.size)}; "
                    "RAG_MAX_FILE_MB)"
                )
        except UploadError as e:
            refused.append({"path": given, "reason": str(e)})
            continue
        planned.append(_Planned(upload, safe))
    return planned, refused


def _save_all(
    col: Collection, planned: list[_Planned], refused: list[dict[str, str]]
) -> tuple[list[Path], set[str]]:
    """Saves the planned uploads under the collection's write lock (the files of a document
    being ingested are not replaced); returns their paths and those of the new files.
    Those that cannot be saved join ``refused``."""
    folder = upload_dir(col.settings.data_dir, col.name)
    limit = col.settings.max_file_bytes
    saved: list[Path] = []
    created: set[str] = set()
    with _locked(col):
        for item in planned:
            given = item.upload.filename or ""
            try:
                path, new = _save(item.upload.file, folder, item.name, limit)
            except UploadError as e:
                refused.append({"path": given, "reason": str(e)})
                continue
            except OSError as e:
                refused.append({"path": given, "reason": f"could not be saved: {e.strerror or e}"})
                continue
            saved.append(path)
            if new:
                created.add(os.path.realpath(path))
    return saved, created


def _ingest(col: Collection, paths: list[Path]) -> dict[str, Any]:
    """``rag ingest PATH...`` for the saved files (its incremental run and report). The
    lock is taken again: between the two only another process can come in (this one's
    uploads wait in :data:`_exclusive`), and then this upload is the one refused."""
    try:
        return col.ingest([str(p) for p in paths]).to_json()
    except LockedError as e:
        raise _busy(col.name, e) from e


def _empty_report() -> dict[str, Any]:
    from rag.indexing import IngestReport

    out = IngestReport().to_json()
    out["saved"] = []
    return out


def _find(service: Service, name: str, store: str | None = None) -> CollectionRef | None:
    """The collection called ``name`` in ``store``; without a store, the one in the
    server's default store, else the only one of that name."""
    refs = [r for r in service.refs() if r.name == name]
    if store is not None:
        return next((r for r in refs if r.store == store), None)
    default = service.settings.store
    return next((r for r in refs if r.store == default), refs[0] if len(refs) == 1 else None)


def _collection(service: Service, name: str) -> tuple[Collection, bool]:
    """The collection to ingest into, and whether it is the service's own (shared with the
    searches, so that they see what is written) rather than opened here for a new one."""
    from rag.collection import open_collection

    ref = _find(service, name)
    if ref is not None:
        return service.collection(ref), True
    return open_collection(service.settings.with_(collection=name), create=True), False


class _Exclusive:
    """One ingest per collection in this process at a time; the next one is refused (409)
    rather than queued, as a second ``rag ingest`` is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def __call__(self, data_dir: Path, name: str) -> Iterator[None]:
        key = (os.path.realpath(data_dir), name)
        with self._lock:
            if key in self._busy:
                raise _busy(name)
            self._busy.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(key)


_exclusive = _Exclusive()


@contextlib.contextmanager
def _locked(col: Collection) -> Iterator[None]:
    """The collection's write lock (shared with every process), or 409."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(col.lock())
        except LockedError as e:
            raise _busy(col.name, e) from e
        yield


def _busy(name: str, cause: Exception | None = None) -> ApiError:
    if cause is not None:
        logger.info("refused an upload into %r: %s", name, cause)
    return ApiError(
        409,
        f"collection {name!r} is being ingested already: try again when that ingest is done",
        type="invalid_request_error",
        code="ingest_in_progress",
    )


def _save(data: IO[bytes], folder: Path, name: str, limit: int) -> tuple[Path, bool]:
    """Writes ``data`` as ``folder/name`` (through a hidden temporary file, renamed into
    place) unless that file holds the same bytes already; returns its path and whether it
    is a new file."""
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    path = folder / name
    if path.resolve().parent != root:
        raise UploadError(f"{name!r}: the file would land outside the upload folder")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            data.seek(0)
            while block := data.read(_COPY):
                size += len(block)
                if size > limit:
                    raise UploadError(f"{name!r}: larger than the {_mb(limit)} limit")
                digest.update(block)
                out.write(block)
        new = not path.exists()
        if not new and path.stat().st_size == size and _digest(path) == digest.digest():
            Path(tmp).unlink()  # the same bytes: left as it is, its mtime too
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, new


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY):
            h.update(block)
    return h.digest()


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"
