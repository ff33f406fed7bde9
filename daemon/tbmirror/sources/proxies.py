"""The outbound proxies the environment names, read exactly as httpx reads them by default.

`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lower-case forms) are mapped
to httpx mount patterns by httpx's own function (so NO_PROXY means what it means to httpx and
curl: `*`, host names and their subdomains, IP addresses, `localhost`). httpx skips this when a
client is given its own transport, as RestClient is (sources/deadline.py), so RestClient mounts
these proxies itself. Only `http://` proxies are supported (a plain HTTP target is forwarded,
an HTTPS one tunnelled with CONNECT); an `https://` or SOCKS proxy is a ConfigError.

Nothing here shows a proxy's credentials: `shown` drops `user:password@`, and an unusable
proxy URL is named by its variable, never by its value.
"""

from __future__ import annotations

import httpx
from httpx._utils import get_environment_proxies  # httpx's mapping (no public API exposes it)

from tbmirror.errors import ConfigError

_VARIABLES = {"http://": "HTTP_PROXY", "https://": "HTTPS_PROXY", "all://": "ALL_PROXY"}


def environment_proxies() -> dict[str, httpx.Proxy | None]:
    """httpx mount pattern -> the proxy for requests matching it, or None (NO_PROXY: direct).
    Empty when no proxy variable is set, or NO_PROXY is `*`."""
    found: dict[str, httpx.Proxy | None] = {}
    for pattern, url in get_environment_proxies().items():
        found[pattern] = None if url is None else _proxy(pattern, url)
    return found


def shown(proxy: httpx.Proxy) -> str:
    """The proxy's address without credentials (httpx.Proxy keeps them apart from its URL)."""
    return str(proxy.url.copy_with(username=None, password=None))


def _proxy(pattern: str, url: str) -> httpx.Proxy:
    name = _VARIABLES.get(pattern, "a proxy variable")
    variable = f"{name} (or {name.lower()})"
    try:
        proxy = httpx.Proxy(url)
    except (ValueError, httpx.InvalidURL):
        raise ConfigError(f"{variable}: not a proxy URL (http://host:port)") from None
    if proxy.url.scheme != "http":
        raise ConfigError(
            f"{variable}: a {proxy.url.scheme}:// proxy is not supported; "
            "name an http:// proxy (it tunnels HTTPS with CONNECT)"
        )
    if not proxy.url.host:
        raise ConfigError(f"{variable}: the proxy URL names no host (http://host:port)")
    return proxy
