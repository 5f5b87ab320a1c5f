#!/usr/bin/env python3
"""Answer a question from what store.py stored, with lokal's gpt-3.5-turbo.

    python query.py ["What did the council say about taxes?"] [--db ./db] [--k 4]

The question is embedded (text-embedding-ada-002), the k closest chunks are
fetched from Chroma, and gpt-3.5-turbo answers from them alone. The answer is
printed, then the chunks it was given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough

from common import CHAT_MODEL, api_key, base_url
from store import make_embeddings, open_store

DEFAULT_QUESTION = "What did the council say about taxes?"

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the context below. If the context does not "
               "contain the answer, say that you don't know. Keep the answer short.\n\n"
               "Context:\n{context}"),
    ("human", "{question}"),
])


def make_llm(**overrides: Any):  # noqa: ANN201 - ChatOpenAI
    from langchain_openai import ChatOpenAI

    options: dict[str, Any] = {"model": CHAT_MODEL, "temperature": 0, "max_tokens": 200,
                               "base_url": base_url(), "api_key": api_key()}
    options.update(overrides)
    return ChatOpenAI(**options)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


def build_chain(db: Path, llm: Any = None, k: int = 4) -> Runnable:
    """question -> {"question", "context": [Document], "answer": str}."""
    retriever = open_store(db, make_embeddings()).as_retriever(search_kwargs={"k": k})
    answer = (RunnablePassthrough.assign(context=lambda x: format_docs(x["context"]))
              | PROMPT | (llm or make_llm()) | StrOutputParser())
    return {"context": retriever, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--db", type=Path, default=Path("db"), help="Chroma directory (default: ./db)")
    parser.add_argument("--k", type=int, default=4, help="how many chunks to retrieve (default: 4)")
    args = parser.parse_args(argv)
    if not args.db.is_dir():
        parser.error(f"no database at {args.db}: run store.py first")

    result = build_chain(args.db, k=args.k).invoke(args.question)
    print(f"Question: {args.question}")
    print(f"Answer: {result['answer'].strip()}")
    print()
    print("Sources:")
    for number, doc in enumerate(result["context"], 1):
        print(f"--- [{number}] {doc.metadata.get('source', '?')}")
        print(doc.page_content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
