"""API keys and roles: `inspect` (cameras) and `admin` (QA engineers; may also inspect).

Keys come from settings (INSPECT_INSPECT_API_KEYS, INSPECT_ADMIN_API_KEYS) and are sent as
`X-API-Key: <key>` or `Authorization: Bearer <key>`. Comparison is constant time: every
configured key is compared (hmac.compare_digest over SHA-256 digests, so lengths do not leak
either) and no early exit depends on which key matched. With no key configured the service runs
in open mode: every caller has every role; start-up logs that loudly. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from enum import StrEnum

from pydantic import SecretStr

from service.errors import Problem


class Role(StrEnum):
    INSPECT = "inspect"
    ADMIN = "admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """The configured keys as digests; `role_of(key)` answers in time independent of the key."""

    def __init__(self, inspect_keys: Sequence[SecretStr], admin_keys: Sequence[SecretStr]) -> None:
        self._keys = [(_digest(k.get_secret_value()), Role.INSPECT) for k in inspect_keys]
        self._keys += [(_digest(k.get_secret_value()), Role.ADMIN) for k in admin_keys]

    @property
    def open_mode(self) -> bool:
        """No keys configured: every caller has every role."""
        return not self._keys

    def role_of(self, key: str | None) -> Role | None:
        """The role a presented key grants (admin wins), None for no or a wrong key."""
        if self.open_mode:
            return Role.ADMIN
        if not key:
            return None
        given = _digest(key)
        is_inspect = False
        is_admin = False
        for digest, role in self._keys:  # no early exit: the time does not depend on the match
            match = hmac.compare_digest(given, digest)
            is_inspect |= match and role is Role.INSPECT
            is_admin |= match and role is Role.ADMIN
        if is_admin:
            return Role.ADMIN
        return Role.INSPECT if is_inspect else None

    def require(self, key: str | None, role: Role) -> Role:
        """The caller's role if it is allowed `role`, else a 401 (no/wrong key) or 403 problem."""
        granted = self.role_of(key)
        if granted is None:
            what = "no API key was sent" if not key else "the API key is not valid"
            raise Problem(
                401,
                "unauthorized",
                f"{what}; send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="inspect"'},
            )
        if role is Role.ADMIN and granted is not Role.ADMIN:
            raise Problem(403, "forbidden", "this operation needs an admin API key")
        return granted


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key from `X-API-Key`, else from `Authorization: Bearer ...`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
