"""Who may call the server: loopback-only by default, a bearer token for anything wider."""
from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from ..errors import ConfigError

TOKEN_ENV = "MMFUSE_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def load_token(token_file: Path | None) -> str | None:
    """The token from --token-file, else from $MMFUSE_TOKEN, else None (no auth)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"--token-file {token_file}: {error.strerror or error}") from None
        source = f"--token-file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the token must have at least {MIN_TOKEN_CHARS} characters "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: the model would be open to anyone."""
    if not is_loopback(host) and token is None:
        raise ConfigError(f"--host {host} is reachable from other machines: set a bearer token with "
                          f"--token-file or ${TOKEN_ENV} (or bind 127.0.0.1)")


def token_matches(header: str | None, token: str) -> bool:
    """An `Authorization: Bearer <token>` header carrying `token`, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))
