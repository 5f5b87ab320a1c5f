"""`lokal keys add | list | remove`: the named API keys of API_KEYS_FILE.

`add NAME` makes a random key, prints it once on stdout (nothing else is written
there, so `KEY=$(lokal keys add app)` works) and appends its sha256 and limits to
the file; the key itself is stored nowhere. A running server picks the change up
on its next request. The file is `--file`, else API_KEYS_FILE (environment or .env).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lokal.keys import LIMITS, KeysFileError, add_key, read_keys, remove_key
from lokal.settings import Settings, split_list


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage named API keys (API_KEYS_FILE)",
                               description="Manage the named API keys of API_KEYS_FILE: each has a "
                               "name, its key's sha256 and optional limits.")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a key, print it once and write its hash",
                             description="Make a new random key for NAME, print it once, and append its "
                             "sha256 and limits to the keys file (created if missing).")
    add.add_argument("name", metavar="NAME", help="the key's name (letters, digits, . _ @ -): it labels "
                     "metrics, usage and log lines")
    add.add_argument("--requests-per-minute", type=_positive, metavar="N",
                     help="requests that use a model, in any 60 s")
    add.add_argument("--tokens-per-minute", type=_positive, metavar="N",
                     help="prompt + completion tokens, in any 60 s")
    add.add_argument("--concurrent-requests", type=_positive, metavar="N",
                     help="requests using a model at once")
    add.add_argument("--models", metavar="A,B", help="the models it may use (names or shell patterns "
                     "such as qwen*); default: every model")
    add.add_argument("--admin", action="store_true", help="it may manage models and read usage and metrics")
    add.add_argument("--weight", type=float, metavar="W",
                     help="its share of a model's slots when requests wait (default 1)")
    listing = actions.add_parser("list", help="the keys by name, with their limits (never a key)")
    remove = actions.add_parser("remove", help="remove a key by name")
    remove.add_argument("name", metavar="NAME")
    for parser in (add, listing, remove):
        parser.add_argument("--file", type=Path, metavar="PATH",
                            help="the keys file (default: API_KEYS_FILE)")
        parser.set_defaults(handler=run)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _path(args: argparse.Namespace) -> Path | None:
    if args.file is not None:
        return Path(args.file)
    try:
        return Settings().api_keys_file
    except ValidationError:
        return None


def run(args: argparse.Namespace) -> int:
    path = _path(args)
    if path is None:
        print("lokal keys: name the keys file with --file PATH or API_KEYS_FILE", file=sys.stderr)
        return 2
    try:
        if args.keys_command == "add":
            if args.weight is not None and not 0 < args.weight <= 1000:
                print("lokal keys add: --weight must be more than 0 and at most 1000", file=sys.stderr)
                return 2
            key = add_key(path, args.name, requests_per_minute=args.requests_per_minute,
                          tokens_per_minute=args.tokens_per_minute,
                          concurrent_requests=args.concurrent_requests,
                          models=split_list(args.models) if args.models else None,
                          admin=args.admin, weight=args.weight)
            print(key)
            print(f"added the key {args.name!r} to {path}; the key is shown only now: keep it",
                  file=sys.stderr)
            return 0
        if args.keys_command == "remove":
            if not remove_key(path, args.name):
                print(f"lokal keys remove: {path} has no key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed the key {args.name!r} from {path}", file=sys.stderr)
            return 0
        for key in read_keys(path):
            limits = [f"{name}={getattr(key, name)}" for name in LIMITS if getattr(key, name) is not None]
            if key.models is not None:
                limits.append("models=" + ",".join(key.models))
            if key.weight != 1.0:
                limits.append(f"weight={key.weight:g}")
            if key.admin:
                limits.append("admin")
            print(f"{key.name}\t{' '.join(limits) or 'no limits'}")
        return 0
    except (KeysFileError, OSError) as exc:
        print(f"lokal keys: {exc}", file=sys.stderr)
        return 1
