"""Corpus: a folder of documents (DVC-tracked or in git) cut into chunks, with a version.

Why a content version: the index is a pure function of (documents, chunker settings), so its key
is a hash of both. A changed document gives a new version and a new index; the model is untouched
(knowledge that changes belongs in retrieval, not in the weights). When the folder is tracked by
DVC, its `.dvc` md5 is recorded beside the content hash so an auditor can match the two.

Chunks are paragraph-aligned windows of at most `max_chars` characters with `overlap` characters
carried over, so an answer-bearing sentence is never cut between two chunks without context.
A chunk id is `<relative path>#<n>`: stable for the same content and readable in a citation.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from controller.errors import PermanentError

TEXT_SUFFIXES = (".md", ".txt", ".rst", ".markdown", ".text")
MAX_CHARS = 800
OVERLAP = 120
CHUNKER_VERSION = "para-window-1"
MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    path: str
    text: str

    def to_dict(self) -> dict:
        return {"chunkId": self.chunk_id, "path": self.path, "text": self.text}

    @classmethod
    def from_dict(cls, data: dict) -> "Chunk":
        return cls(data["chunkId"], data["path"], data["text"])


def document_paths(corpus_dir: Path) -> list[Path]:
    """Text documents under the folder, in a stable order; hidden files and DVC/git metadata skipped."""
    if not corpus_dir.is_dir():
        raise PermanentError(f"serving.corpus: '{corpus_dir}' is not a folder; point it at the corpus directory "
                             "(run `dvc pull` first if it is DVC-tracked)")
    out = []
    for path in sorted(corpus_dir.rglob("*")):
        rel = path.relative_to(corpus_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in TEXT_SUFFIXES:
            out.append(path)
    return out


def dvc_md5(corpus_dir: Path) -> str | None:
    """md5 pinned by `<corpus>.dvc` next to the folder, when the corpus is DVC-tracked."""
    pointer = corpus_dir.with_name(corpus_dir.name + ".dvc")
    if not pointer.is_file():
        return None
    match = re.search(r"md5:\s*([0-9a-f]{32}(?:\.dir)?)", pointer.read_text(errors="replace"))
    return match.group(1) if match else None


def corpus_version(corpus_dir: Path, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> str:
    """sha256 over (chunker settings, each document's relative path and bytes)."""
    h = hashlib.sha256(json.dumps([CHUNKER_VERSION, max_chars, overlap]).encode())
    for path in document_paths(corpus_dir):
        data = path.read_bytes()
        h.update(path.relative_to(corpus_dir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def folder_version(corpus_dir: Path) -> str:
    """The version of a corpus folder on disk, for serving and evaluating by hand (`ftops eval
    --corpus`, `ftops deploy`): `sha256:` + its content version. The controller names a corpus by
    its git tree hash or .dvc md5 instead (controller.source.corpus_version); a report evaluated
    under one name never vouches for the other, so both sides of one path use the same one."""
    return f"sha256:{corpus_version(Path(corpus_dir))}"


def split_text(text: str, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[str]:
    """Paragraph-aligned windows of at most max_chars; a paragraph longer than that is cut on
    whitespace. Consecutive windows share up to `overlap` trailing characters."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for para in paragraphs:
        para = re.sub(r"\s+", " ", para)
        while len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > max_chars:
            chunks.append(current)
            tail = current[-overlap:] if overlap else ""
            tail = tail[tail.find(" ") + 1:] if " " in tail else tail
            current = (tail + " " + piece).strip() if tail and len(tail) + 1 + len(piece) <= max_chars else piece
        else:
            current = f"{current} {piece}".strip() if current else piece
    if current:
        chunks.append(current)
    return chunks


def load_chunks(corpus_dir: Path, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in document_paths(corpus_dir):
        rel = path.relative_to(corpus_dir).as_posix()
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PermanentError(f"serving.corpus: {rel} is larger than {MAX_FILE_BYTES // 2**20} MiB; split it")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PermanentError(f"serving.corpus: {rel} is not UTF-8 text ({exc}); convert it or remove it") from None
        for n, piece in enumerate(split_text(text, max_chars, overlap)):
            chunks.append(Chunk(f"{rel}#{n}", rel, piece))
    if not chunks:
        raise PermanentError(f"serving.corpus: '{corpus_dir}' has no text documents ({', '.join(TEXT_SUFFIXES)})")
    return chunks
