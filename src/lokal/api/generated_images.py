"""Generated images kept for `url` answers, served at `/generated-images/NAME` (LocalAI's path).

Names are 256 random bits (URL-safe base64) plus the format's extension: a URL is the
capability to read its image, so the route needs no API key (apps and `<img>` tags fetch
it without one) and nothing can be listed or guessed. Files are written to a hidden
temporary name and renamed into place, so a half-written image is never served; only
names lokal made are served, from the one folder, never through a symlink. Images are
kept for GENERATED_IMAGES_TTL and at most GENERATED_IMAGES_KEEP of them (the oldest go
first); expired ones are refused and removed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Request, Response

from lokal.api.family import Family, Mount
from lokal.errors import NotFound

log = logging.getLogger(__name__)

PREFIX = "/generated-images"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{43}\.(png|jpg|webp)$")

router = APIRouter(include_in_schema=False)


class GeneratedImages:
    """A folder of generated images with a lifetime and a count limit."""

    def __init__(self, folder: Path | None, *, keep: int, ttl: float | None) -> None:
        self.owned = folder is None  # a private temporary folder, removed at close
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="lokal-images-"))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder.resolve()
        self.keep = keep
        self.ttl = ttl
        self._lock = threading.Lock()

    def save(self, data: bytes, fmt: str) -> str:
        """Keep an image; its name (unguessable), for `/generated-images/NAME`."""
        name = f"{secrets.token_urlsafe(32)}.{EXTENSIONS[fmt]}"
        temporary = self.folder / f".{name}.partial"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.replace(temporary, self.folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.prune()
        return name

    def read(self, name: str) -> tuple[bytes, str]:
        """An image's bytes and media type; NotFound for a name lokal did not make, or one
        that expired or was pruned."""
        if not _NAME.match(name):
            raise NotFound("There is no such generated image.")
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise NotFound("There is no such generated image (it may have expired: images are kept "
                           "for GENERATED_IMAGES_TTL).") from None
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise NotFound("There is no such generated image.")
            if self.ttl is not None and time.time() - info.st_mtime > self.ttl:
                path.unlink(missing_ok=True)
                raise NotFound("The generated image has expired (images are kept for GENERATED_IMAGES_TTL).")
            data = stream.read()
        return data, MEDIA_TYPES[name.rsplit(".", 1)[1]]

    def prune(self) -> None:
        """Remove expired images, and the oldest beyond the count to keep."""
        with self._lock:
            now = time.time()
            images: list[tuple[float, Path]] = []
            for path in self.folder.iterdir():
                if not _NAME.match(path.name):
                    continue
                try:
                    modified = path.lstat().st_mtime
                except OSError:
                    continue
                if self.ttl is not None and now - modified > self.ttl:
                    path.unlink(missing_ok=True)
                else:
                    images.append((modified, path))
            images.sort()
            for _, path in images[: max(0, len(images) - self.keep)]:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)


def store(request: Request) -> GeneratedImages:
    return request.app.state.generated_images  # type: ignore[no-any-return]


@router.get(PREFIX + "/{name}")
async def generated_image(name: str, request: Request) -> Response:
    data, media_type = store(request).read(name)
    ttl = store(request).ttl
    return Response(data, media_type=media_type, headers={
        "Cache-Control": f"private, max-age={int(ttl)}" if ttl else "private",
        "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"})


# Generated images are read by their unguessable URLs, without a key (apps, <img> tags).
FAMILY = Family("images", mounts=(Mount(router),), prefixes=(PREFIX,), open_prefixes=(PREFIX + "/",))
