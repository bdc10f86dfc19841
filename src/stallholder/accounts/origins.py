"""Web origins (``scheme://host[:port]``): what a creator's ``allowed_origins`` holds and
how a browser's ``Origin`` is checked against it. Pure: no I/O."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_ORIGINS = 20
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(value: str) -> str:
    """``value`` as a browser sends it in ``Origin``: lower-case scheme and host, the port
    only when it is not the scheme's default, nothing else.

    Raises:
        ValueError: not an http(s) origin, or it has a path, query, fragment or user.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin; write it as https://shop.example")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"{value!r} is not an origin: leave out the path, query and fragment "
            "(https://shop.example, not https://shop.example/page)"
        )
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{value!r} has an invalid port") from error
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def origin_of(url: str) -> str:
    """The origin of an absolute http(s) URL (the platform's ``base_url``)."""
    parts = urlsplit(url)
    return normalise_origin(f"{parts.scheme}://{parts.netloc}")


def is_origin_allowed(origin: str, *, allowed: list[str], own_origin: str) -> bool:
    """Whether a page at ``origin`` may embed the checkout or call the API with the
    publishable key: the platform's own origin always may, others only when listed."""
    try:
        normal = normalise_origin(origin)
    except ValueError:
        return False
    return normal == own_origin or normal in allowed
