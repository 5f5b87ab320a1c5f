"""Outbound fetches, confined: what lokal may be made to download from, and how.

Galleries, config URLs and model files come from users and from untrusted gallery
content, and the server fetches them on request. Unconfined, that is an SSRF hole
(LocalAI's #10665 and #9395: the server made to fetch cloud metadata or internal
services). Every outbound request of the install path goes through `OutboundPolicy`:

* schemes: `huggingface://`, `hf://` and `github:` are mapped to https first; after
  that only `https` is accepted, and plain `http` only to a host named in
  ``ALLOWED_DOWNLOAD_HOSTS``;
* the host is resolved once and every address it resolves to must be public:
  loopback, private, link-local (cloud metadata lives there), unique-local,
  shared, multicast and reserved ranges are refused unless the host is in
  ``ALLOWED_DOWNLOAD_HOSTS``;
* the connection goes to the address that was checked (the URL is rewritten to
  the IP, with ``Host`` and TLS SNI/verification still for the name), so DNS
  cannot answer differently between check and connect;
* redirects are followed by hand, each hop checked again, credentials dropped
  when the host changes;
* timeouts on connect and on silence; a size cap (`max_bytes`) that the
  downloader enforces on Content-Length and on bytes actually read.

Every refusal is a `URLRefused` (400) whose message names the rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpx

from lokal.errors import BadGateway, BadRequest
from lokal.transfer.wide import WideTransport

Resolver = Callable[[str, int], list[str]]

#: Cloud metadata endpoints, named in refusals (they are link-local or private anyway).
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
}
_GITHUB = re.compile(r"^github:([^/\s]+)/([^/\s]+)/([^@\s]+?)(?:@([^@\s]+))?$")
_HF = re.compile(r"^(?:huggingface|hf)://([^/\s]+)/([^/\s]+)/(.+)$")


class URLRefused(BadRequest):
    """An outbound URL refused by a named rule (400)."""

    def __init__(self, url: str, rule: str) -> None:
        super().__init__(f"refused to fetch {_shown(url)}: {rule}", param="url")
        self.url = url
        self.rule = rule


def _shown(url: str) -> str:
    """A URL for messages: no user:password part, not overly long."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url if len(url) <= 300 else url[:300] + "..."


def default_resolver(host: str, port: int) -> list[str]:
    """Every address host resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise URLRefused(host, f"the host {host!r} does not resolve ({exc.strerror})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def map_url(uri: str, hf_endpoint: str = "https://huggingface.co") -> str:
    """An http(s) URL for a LocalAI URI: `huggingface://owner/repo/file` (also `hf://`),
    `github:owner/repo/path@branch` (raw file, branch default main), http(s) as is.
    Anything else is refused with the scheme rule."""
    uri = uri.strip()
    hf = _HF.match(uri)
    if hf:
        owner, repo, file = hf.groups()
        revision = "main"
        if "@" in repo:
            repo, revision = repo.split("@", 1)
        return (f"{hf_endpoint.rstrip('/')}/{owner}/{repo}/resolve/{quote(revision, safe='')}/"
                f"{quote(file, safe='/')}")
    gh = _GITHUB.match(uri)
    if gh:
        owner, repo, path, branch = gh.groups()
        return f"https://raw.githubusercontent.com/{owner}/{repo}/{branch or 'main'}/{path}"
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        scheme = parts.scheme or uri.split(":", 1)[0]
        raise URLRefused(uri, f"the scheme {scheme!r} is not allowed (use https://, "
                              "huggingface://, hf:// or github:)")
    return uri


def address_rule(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched from, or None for a public one."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata range)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved or shared address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: str  # as the user or server named it
    host: str
    port: int
    scheme: str
    address: str  # the checked IP to connect to

    @property
    def connect_url(self) -> str:
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((self.scheme, f"{ip}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class OutboundPolicy:
    """The rules for outbound fetches; one per server (from settings), passed down."""

    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int | None = None
    connect_timeout: float = 15.0
    stall_timeout: float = 60.0
    max_redirects: int = 10
    hf_endpoint: str = "https://huggingface.co"
    hf_token: str | None = None
    resolver: Resolver = field(default=default_resolver, compare=False)

    def host_allowed(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return host in self.allowed_hosts or f"{host}:{port}" in self.allowed_hosts \
            or f"[{host}]:{port}" in self.allowed_hosts

    def map(self, uri: str) -> str:
        return map_url(uri, self.hf_endpoint)

    def check(self, url: str) -> Target:
        """Check an http(s) URL against every rule; the address to connect to."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise URLRefused(url, f"the scheme {scheme!r} is not allowed (only https, and http "
                                  "to hosts in ALLOWED_DOWNLOAD_HOSTS)")
        try:
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise URLRefused(url, "the URL's port is not a number") from None
        if not host:
            raise URLRefused(url, "the URL has no host")
        if parts.username or parts.password:
            raise URLRefused(url, "URLs with user:password are not allowed")
        allowed = self.host_allowed(host, port)
        try:
            addresses = [host] if _is_ip(host) else self.resolver(host, port)
        except URLRefused as exc:
            raise URLRefused(url, exc.rule) from None
        if not addresses:
            raise URLRefused(url, f"the host {host!r} does not resolve")
        if not allowed:
            for address in addresses:
                rule = address_rule(ipaddress.ip_address(address.split("%")[0]))
                if rule is not None:
                    raise URLRefused(url, f"{host} resolves to {address}, {rule}; add the host to "
                                          "ALLOWED_DOWNLOAD_HOSTS to allow it")
        if scheme == "http" and not allowed:
            raise URLRefused(url, f"plain http is allowed only to hosts in ALLOWED_DOWNLOAD_HOSTS "
                                  f"({host} is not); use https")
        return Target(url=url, host=host, port=port, scheme=scheme, address=addresses[0])

    def client(self) -> httpx.Client:
        """An httpx client with this policy's timeouts (redirects are followed by `open`)."""
        timeout = httpx.Timeout(connect=self.connect_timeout, read=self.stall_timeout,
                                write=self.stall_timeout, pool=self.connect_timeout)
        return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                            transport=WideTransport())

    def _auth_for(self, host: str) -> dict[str, str]:
        endpoint_host = (urlsplit(self.hf_endpoint).hostname or "").lower()
        if self.hf_token and host == endpoint_host:
            return {"Authorization": f"Bearer {self.hf_token}"}
        return {}

    @contextmanager
    def open(self, client: httpx.Client, url: str, *, method: str = "GET",
             headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed response for url, every redirect hop checked; `response.request.extensions
        ["lokal_url"]` is the URL finally fetched."""
        current = url
        for _ in range(self.max_redirects + 1):
            target = self.check(current)
            sent = {**(headers or {}), **self._auth_for(target.host), "Host": target.host_header}
            extensions: dict[str, object] = {}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            request = client.build_request(method, target.connect_url, headers=sent,
                                           extensions=extensions)
            response = client.send(request, stream=True, follow_redirects=False)
            if response.is_redirect and "location" in response.headers:
                location = response.headers["location"]
                response.close()
                current = urljoin(current, location)
                continue
            response.request.extensions["lokal_url"] = current
            try:
                yield response
            finally:
                response.close()
            return
        raise URLRefused(url, f"more than {self.max_redirects} redirects")

    def fetch_bytes(self, url: str, *, limit: int = 8 << 20, what: str = "file") -> bytes:
        """A small document (a gallery index, a config) whole, within limit bytes."""
        try:
            with self.client() as client, self.open(client, url) as response:
                if response.status_code >= 500:
                    raise SourceFailed(f"fetching {what} {_shown(url)} failed: the server answered "
                                       f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise FetchFailed(f"fetching {what} {_shown(url)} failed: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise URLRefused(url, f"the {what} is {int(declared)} bytes, over the "
                                          f"{limit}-byte limit for it")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise URLRefused(url, f"the {what} is over the {limit}-byte limit for it")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise SourceFailed(f"fetching {what} {_shown(url)} failed: {exc or type(exc).__name__}") from exc


class FetchFailed(BadRequest):
    """A document the request named is not there (the server answered 4xx: 400; the
    message says why)."""


class SourceFailed(BadGateway):
    """A document could not be fetched for a network reason, or its server failed (502):
    not the request's fault, and worth retrying."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True
