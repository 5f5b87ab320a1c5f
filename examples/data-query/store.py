#!/usr/bin/env python3
"""Split a text file, embed the pieces with lokal and keep them in a local Chroma database.

    python store.py [--file document.txt] [--db ./db]

Embeddings come from the server's `text-embedding-ada-002` (in `lokal demo`,
all-MiniLM-L6-v2). Chroma runs embedded, in this process, and writes to --db;
no Chroma server is needed. Running it again replaces what the database held.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import COLLECTION, EMBEDDING_MODEL, api_key, base_url, prefill_tiktoken_cache

HERE = Path(__file__).resolve().parent


def make_embeddings(**overrides: object):  # noqa: ANN201 - OpenAIEmbeddings
    from langchain_openai import OpenAIEmbeddings

    prefill_tiktoken_cache()  # OpenAIEmbeddings tokenizes with tiktoken's cl100k_base
    options: dict[str, object] = {"model": EMBEDDING_MODEL, "base_url": base_url(), "api_key": api_key()}
    options.update(overrides)
    return OpenAIEmbeddings(**options)


def open_store(db: Path, embeddings: object):  # noqa: ANN201 - Chroma
    import chromadb
    from langchain_chroma import Chroma

    return Chroma(collection_name=COLLECTION, embedding_function=embeddings, persist_directory=str(db),
                  client_settings=chromadb.config.Settings(anonymized_telemetry=False))


def split(path: Path) -> list:
    from langchain_core.documents import Document
    from langchain_text_splitters import CharacterTextSplitter

    text = path.read_text(encoding="utf-8")
    splitter = CharacterTextSplitter(chunk_size=300, chunk_overlap=70)
    return splitter.split_documents([Document(page_content=text, metadata={"source": path.name})])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=HERE / "document.txt", help="text file to store")
    parser.add_argument("--db", type=Path, default=Path("db"), help="Chroma directory (default: ./db)")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")

    chunks = split(args.file)
    store = open_store(args.db, make_embeddings())
    store.reset_collection()
    store.add_documents(chunks)
    print(f"stored {len(chunks)} chunks of {args.file.name} in {args.db} (embeddings from {base_url()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
