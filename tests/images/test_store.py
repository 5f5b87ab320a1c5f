"""The generated-images folder behind `url` answers: names, lifetime, count, confinement."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from lokal.api.generated_images import GeneratedImages
from lokal.errors import NotFound


def test_names_are_unguessable_and_only_whole_files_are_served(tmp_path: Path) -> None:
    store = GeneratedImages(tmp_path / "images", keep=10, ttl=None)
    names = {store.save(b"png-bytes", "png") for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}\.png", name)  # 256 random bits
    name = store.save(b"\xff\xd8jpeg", "jpeg")
    assert name.endswith(".jpg") and store.read(name) == (b"\xff\xd8jpeg", "image/jpeg")
    assert not [p for p in store.folder.iterdir() if p.name.startswith(".")]  # no partial left behind
    # A partial file, another file, a path and a symlink are never served.
    (store.folder / f".{name}.partial").write_bytes(b"half")
    (store.folder / "notes.txt").write_text("x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    link = "A" * 43 + ".png"
    os.symlink(outside, store.folder / link)
    for bad in (f".{name}.partial", "notes.txt", "../secret.png", link, "A" * 42 + ".png"):
        with pytest.raises(NotFound):
            store.read(bad)


def test_images_expire_and_the_oldest_go_beyond_the_count(tmp_path: Path) -> None:
    store = GeneratedImages(tmp_path / "images", keep=3, ttl=60)
    first = store.save(b"1", "png")
    old = time.time() - 120
    os.utime(store.folder / first, (old, old))
    with pytest.raises(NotFound, match="expired"):
        store.read(first)
    assert not (store.folder / first).exists()
    names = []
    for number in range(5):
        names.append(store.save(str(number).encode(), "webp"))
        stamp = time.time() - 50 + number  # distinct ages, oldest first
        os.utime(store.folder / names[-1], (stamp, stamp))
    store.prune()
    kept = sorted(p.name for p in store.folder.iterdir())
    assert kept == sorted(names[-3:])
    assert store.read(names[-1]) == (b"4", "image/webp")


def test_a_private_folder_is_removed_at_close_a_named_one_kept(tmp_path: Path) -> None:
    private = GeneratedImages(None, keep=5, ttl=None)
    private.save(b"x", "png")
    assert private.folder.is_dir() and private.folder.stat().st_mode & 0o777 == 0o700
    private.close()
    assert not private.folder.exists()
    named = GeneratedImages(tmp_path / "kept", keep=5, ttl=None)
    named.save(b"x", "png")
    named.close()
    assert len(list((tmp_path / "kept").iterdir())) == 1
