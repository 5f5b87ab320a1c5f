"""Images in requests, for every API family: decoded and checked once, into `tasks.ImagePart`.

Each family finds its images in its own wire format and hands them here:

* OpenAI chat `image_url` parts and Responses `input_image`: a URL, `data:` or
  `http(s)://` -> `await loader_for(request).load(url, where=...)`;
* Ollama `images` (bare base64) -> `from_base64(text, None, ...)`;
* Anthropic `image` blocks: `source.type` `base64` -> `from_base64(data, media_type, ...)`,
  `url` -> `loader.load(url, ...)`.

What the bytes are decides the type (magic bytes; a declared media type is only
checked to be an image type): PNG, JPEG, GIF and BMP, what the engine (llama.cpp's
mtmd with stb_image) decodes. WebP, TIFF, HEIC/AVIF and SVG are named and refused.
Every image is capped (MAX_IMAGE_SIZE decoded bytes, and `MAX_PIXELS`, so that a
small file cannot decode to gigabytes). Remote URLs are fetched only when
ALLOW_REMOTE_IMAGES is on, through the server's confined outbound policy (the
ALLOWED_DOWNLOAD_HOSTS rules: no loopback/private addresses, each redirect hop
checked) with the size cap and IMAGE_FETCH_TIMEOUT; `file://` and every other
scheme are refused. Every refusal is an `ImageError` (400) whose `param` names the
request field and whose message says which image (`where`) and why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from lokal.errors import BadRequest
from lokal.tasks import ImagePart

#: Media types the engine decodes.
SUPPORTED = ("image/png", "image/jpeg", "image/gif", "image/bmp")
#: Largest decoded image, in pixels (a 7000 x 7000 photo; stb_image needs 3 bytes a pixel).
MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT = 10.0

_NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/bmp": "BMP",
          "image/webp": "WebP", "image/tiff": "TIFF", "image/heic": "HEIC", "image/avif": "AVIF",
          "image/svg+xml": "SVG", "image/x-icon": "ICO"}
_DATA_URI = re.compile(r"^data:([^,]*?),", re.IGNORECASE | re.DOTALL)
_B64_CHARS = re.compile(rb"[^A-Za-z0-9+/=_-]")


class ImageError(BadRequest):
    """An image that cannot be used (400): undecodable, unsupported, too large, or not fetched."""


def _supported_names() -> str:
    return ", ".join(_NAMES[t] for t in SUPPORTED)


def sniff(data: bytes) -> str | None:
    """The image media type data is, by its magic bytes (None: not an image lokal knows)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"BM") and len(data) >= 26 and struct.unpack_from("<I", data, 14)[0] in (
            12, 16, 40, 52, 56, 64, 108, 124):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
        return "image/heic"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "image/avif"
    if data.startswith(b"\x00\x00\x01\x00"):
        return "image/x-icon"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return "image/svg+xml"
    return None


def dimensions(data: bytes, media_type: str) -> tuple[int, int] | None:
    """Width and height from the image's header (None when the header is cut short)."""
    try:
        if media_type == "image/png":
            if data[12:16] != b"IHDR":
                return None
            return struct.unpack_from(">II", data, 16)
        if media_type == "image/gif":
            return struct.unpack_from("<HH", data, 6)
        if media_type == "image/bmp":
            if struct.unpack_from("<I", data, 14)[0] == 12:
                return struct.unpack_from("<HH", data, 18)
            width, height = struct.unpack_from("<ii", data, 18)
            return abs(width), abs(height)
        if media_type == "image/jpeg":
            return _jpeg_dimensions(data)
    except struct.error:
        return None
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        length = struct.unpack_from(">H", data, i + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + length
    return None


def from_bytes(data: bytes, declared: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
               where: str = "image", param: str = "messages") -> ImagePart:
    """An image from its bytes, checked: a supported type by its magic bytes, within the caps.
    `declared` (a media type the client named) must be an image type if given."""
    if declared:
        kind = declared.split(";", 1)[0].strip().lower()
        if kind and not kind.startswith("image/"):
            raise ImageError(f"{where}: the media type {kind!r} is not an image "
                             f"(send {_supported_names()})", param=param)
    if not data:
        raise ImageError(f"{where}: the image is empty", param=param)
    if len(data) > max_bytes:
        raise ImageError(f"{where}: the image is {len(data)} bytes, over the {max_bytes}-byte limit "
                         "(MAX_IMAGE_SIZE)", param=param)
    media_type = sniff(data)
    if media_type is None:
        raise ImageError(f"{where}: the data is not an image lokal can read (send {_supported_names()})",
                         param=param)
    if media_type not in SUPPORTED:
        raise ImageError(f"{where}: {_NAMES[media_type]} images are not supported by the engine "
                         f"(send {_supported_names()})", param=param)
    size = dimensions(data, media_type)
    if size is None:
        raise ImageError(f"{where}: the {_NAMES[media_type]} image is cut short or corrupt", param=param)
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{where}: the image has no pixels ({width}x{height})", param=param)
    if width * height > MAX_PIXELS:
        raise ImageError(f"{where}: the image is {width}x{height} pixels, over the limit of "
                         f"{MAX_PIXELS} pixels", param=param)
    return ImagePart(data=data, media_type=media_type)


def from_base64(text: str, declared: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                where: str = "image", param: str = "messages") -> ImagePart:
    """An image from base64 text (standard or URL-safe alphabet, whitespace allowed)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = re.sub(rb"\s+", b"", raw)
    if len(raw) * 3 // 4 > max_bytes + 3:
        raise ImageError(f"{where}: the image is over the {max_bytes}-byte limit (MAX_IMAGE_SIZE)",
                         param=param)
    if _B64_CHARS.search(raw):
        raise ImageError(f"{where}: the image data is not valid base64", param=param)
    raw = raw.replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{where}: the image data is not valid base64", param=param) from None
    return from_bytes(data, declared, max_bytes=max_bytes, where=where, param=param)


def from_data_uri(uri: str, *, max_bytes: int = DEFAULT_MAX_BYTES, where: str = "image",
                  param: str = "messages") -> ImagePart:
    """An image from a `data:[<media type>][;base64],<data>` URI."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise ImageError(f"{where}: a data URI needs a comma before its data "
                         "(data:image/png;base64,...)", param=param)
    header, payload = match.group(1), uri[match.end():]
    params = [p.strip().lower() for p in header.split(";")]
    declared = params[0] or None
    if "base64" in params[1:]:
        return from_base64(payload, declared, max_bytes=max_bytes, where=where, param=param)
    if len(payload) > 3 * max_bytes:
        raise ImageError(f"{where}: the image is over the {max_bytes}-byte limit (MAX_IMAGE_SIZE)",
                         param=param)
    return from_bytes(unquote_to_bytes(payload), declared, max_bytes=max_bytes, where=where, param=param)


@dataclass(frozen=True)
class ImageLimits:
    """The server's image settings."""

    max_bytes: int = DEFAULT_MAX_BYTES
    allow_remote: bool = False
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT


class ImageLoader:
    """Loads the images one request names: data URIs, and remote URLs when allowed.
    `policy` is the server's `transfer.netguard.OutboundPolicy` (None: no remote fetch)."""

    def __init__(self, limits: ImageLimits, policy: Any = None) -> None:
        self.limits = limits
        self.policy = policy

    def decode(self, text: str, declared: str | None = None, *, where: str = "image",
               param: str = "messages") -> ImagePart:
        """Bare base64 (Ollama, Anthropic), with this server's cap."""
        return from_base64(text, declared, max_bytes=self.limits.max_bytes, where=where, param=param)

    async def load(self, url: str, *, where: str = "image", param: str = "messages") -> ImagePart:
        """The image a URL names: `data:` always, `http(s)://` only when ALLOW_REMOTE_IMAGES is on."""
        url = url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return from_data_uri(url, max_bytes=self.limits.max_bytes, where=where, param=param)
        if scheme in ("http", "https"):
            return await self._fetch(url, where, param)
        if scheme == "file":
            raise ImageError(f"{where}: file:// URLs are never read; send the image as a data: URI "
                             "(data:image/png;base64,...)", param=param)
        raise ImageError(f"{where}: the image URL must be a data: URI "
                         f"(data:image/png;base64,...){' or http(s)://' if self.limits.allow_remote else ''}"
                         f", not {scheme + ':' if scheme else 'a bare string'}", param=param)

    async def _fetch(self, url: str, where: str, param: str) -> ImagePart:
        limits = self.limits
        if not limits.allow_remote or self.policy is None:
            raise ImageError(f"{where}: remote image URLs are not fetched by this server "
                             "(ALLOW_REMOTE_IMAGES is off); send the image as a data: URI "
                             "(data:image/png;base64,...)", param=param)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ImageError(f"{where}: only http(s) image URLs are fetched", param=param)
        # The whole fetch is bounded by wait_for; the socket timeouts, a little longer, only
        # end the worker thread afterwards (so the client always hears the same reason).
        socket_timeout = limits.fetch_timeout + 1
        policy = dataclasses.replace(self.policy, connect_timeout=socket_timeout,
                                     stall_timeout=socket_timeout, hf_token=None,
                                     max_bytes=limits.max_bytes)
        try:
            data = await asyncio.wait_for(
                asyncio.to_thread(policy.fetch_bytes, url, limit=limits.max_bytes, what="image"),
                timeout=limits.fetch_timeout)
        except TimeoutError:
            raise ImageError(f"{where}: fetching the image took longer than {limits.fetch_timeout:g}s "
                             "(IMAGE_FETCH_TIMEOUT)", param=param) from None
        except BadRequest as exc:  # refused by a rule, over the cap, or the fetch failed
            raise ImageError(f"{where}: {exc.message}", param=param) from exc
        return from_bytes(data, max_bytes=limits.max_bytes, where=where, param=param)


def limits_from(settings: Any) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes, allow_remote=settings.allow_remote_images,
                       fetch_timeout=settings.image_fetch_timeout)


def loader_for(request: Any) -> ImageLoader:
    """The image loader for a request, from its app's settings and outbound policy."""
    state = request.app.state
    installer = getattr(state, "installer", None)
    return ImageLoader(limits_from(state.settings), getattr(installer, "policy", None))

