"""Fetch remote images without becoming an SSRF proxy.

Every TCP connection (the first request and every redirect) goes through `GuardedBackend`, which resolves
the host itself, refuses the connection if ANY resolved address is not a public unicast address, and then
connects to the address it checked (no second lookup, so DNS rebinding cannot swap it). Redirects are
followed by hand so that each hop's scheme and domain allow-list are checked too. Bodies are capped in
bytes and the whole fetch in wall time. Proxies from the environment are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from pixtral.prompt.images import MediaRefused

Resolver = Callable[[str, int], list[str]]

# Public addresses that still reach a cloud provider's instance metadata or host agent.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "168.63.129.16",  # Azure wire server
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
METADATA_HOSTNAMES = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"}
)


class MediaFetchError(MediaRefused):
    """The remote image cannot be fetched; the message says why (safe to show the client)."""

    reason = "remote_media_refused"


class BlockedAddressError(MediaFetchError):
    """The URL points at an address the server must not reach."""


def blocked_reason(address: str) -> str | None:
    """Why an IP address must not be contacted, or None when it is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            inner = blocked_reason(str(mapped))
            if inner:
                return inner
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for attr, what in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
        ("is_site_local", "a site-local address"),
    ):
        if getattr(ip, attr, False):
            return what
    if not ip.is_global:
        return "not a globally routable address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MediaFetchError(f"cannot resolve host {host!r}: {e.strerror}") from e
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.NetworkBackend):
    """A network backend that only ever connects to addresses it resolved and checked itself."""

    def __init__(self, resolver: Resolver = system_resolver, inner: httpcore.NetworkBackend | None = None):
        self.resolver = resolver
        self.inner = inner or httpcore.SyncBackend()

    def checked_addresses(self, host: str, port: int) -> list[str]:
        host = host.strip("[]").rstrip(".").lower()
        if host in METADATA_HOSTNAMES:
            raise BlockedAddressError(f"refusing to fetch from {host!r}: a cloud metadata host")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]
        except ValueError:
            addresses = self.resolver(host, port)
        if not addresses:
            raise MediaFetchError(f"host {host!r} resolves to no address")
        for address in addresses:
            reason = blocked_reason(address)
            if reason:
                raise BlockedAddressError(
                    f"refusing to fetch from {host!r}: it resolves to {address}, {reason}. "
                    "Only public addresses may be fetched; send the image as a data: URL instead."
                )
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        address = self.checked_addresses(host, port)[0]
        return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args, **kwargs) -> httpcore.NetworkStream:  # pragma: no cover
        raise BlockedAddressError("unix sockets are never fetched")

    def sleep(self, seconds: float) -> None:  # pragma: no cover
        time.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__(trust_env=False, retries=0)
        # Replace the pool by one that uses our backend (httpx has no public switch for it).
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(), max_connections=16, network_backend=backend
        )


def host_allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    if not allowed_domains:
        return True
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in allowed_domains)


class RemoteMediaFetcher:
    """`fetcher(url) -> bytes`: an http(s) GET under the guard, the caps and the allow-list."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float,
        max_redirects: int = 3,
        allowed_domains: tuple[str, ...] = (),
        resolver: Resolver = system_resolver,
        inner_backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.allowed_domains = tuple(d.lower().strip(".") for d in allowed_domains)
        self.backend = GuardedBackend(resolver, inner_backend)
        self.client = httpx.Client(
            transport=_GuardedTransport(self.backend),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "pixtral-serve", "Accept": "image/*"},
        )

    def check_url(self, url: str) -> httpx.URL:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise MediaFetchError(f"only http and https URLs can be fetched, not {parts.scheme or 'none'!r}")
        if parts.username or parts.password:
            raise MediaFetchError("URLs with credentials are not fetched")
        host = parts.hostname or ""
        if not host:
            raise MediaFetchError("the URL has no host")
        if not host_allowed(host, self.allowed_domains):
            raise MediaFetchError(
                f"host {host!r} is not in the allowed media domains ({', '.join(self.allowed_domains)})"
            )
        try:
            return httpx.URL(url)
        except httpx.InvalidURL as e:
            raise MediaFetchError(f"invalid URL: {e}") from e

    def __call__(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        current = url
        for _hop in range(self.max_redirects + 1):
            target = self.check_url(current)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MediaFetchError(f"fetching the image took longer than {self.timeout_s:g} s")
            try:
                with self.client.stream("GET", target, timeout=httpx.Timeout(remaining)) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise MediaFetchError("redirect without a Location header")
                        current = urljoin(str(target), location)
                        continue
                    if response.status_code != 200:
                        raise MediaFetchError(f"the image URL answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise MediaFetchError(f"the image is {declared} bytes; the limit is {self.max_bytes}")
                    chunks, total = [], 0
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise MediaFetchError(
                                f"the image is larger than the limit of {self.max_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise MediaFetchError(f"fetching the image took longer than {self.timeout_s:g} s")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except MediaFetchError:
                raise
            except httpx.TimeoutException as e:
                raise MediaFetchError(f"fetching the image took longer than {self.timeout_s:g} s") from e
            except httpx.HTTPError as e:
                cause = e.__cause__ or e.__context__
                while cause is not None and not isinstance(cause, MediaFetchError):
                    cause = cause.__cause__ or cause.__context__
                if isinstance(cause, MediaFetchError):
                    raise cause from None
                raise MediaFetchError(f"cannot fetch the image: {type(e).__name__}: {e}") from e
        raise MediaFetchError(f"too many redirects (more than {self.max_redirects})")

    def close(self) -> None:
        self.client.close()
