"""Dependencies as `Annotated` aliases: the live state, settings and the caller's role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Problem
from service.security import Role, presented_key
from service.settings import ServiceSettings
from service.state import AppState

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (inspect or admin role)"
)
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")


def get_state(request: Request) -> AppState:
    """The running service's state; 503 while it starts or stops."""
    state: AppState | None = getattr(request.app.state, "inspect", None)
    if state is None:
        raise Problem(503, "not-ready", "the service is starting", retry_after=2)
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_app_settings(state: StateDep) -> ServiceSettings:
    return state.settings


SettingsDep = Annotated[ServiceSettings, Depends(get_app_settings)]


def _key(
    x_api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> str | None:
    return presented_key(x_api_key, f"Bearer {bearer.credentials}" if bearer else None)


KeyDep = Annotated[str | None, Depends(_key)]


def require_inspect(state: StateDep, key: KeyDep) -> Role:
    """Cameras: the inspect role (an admin key also works)."""
    return state.keys.require(key, Role.INSPECT)


def require_admin(state: StateDep, key: KeyDep) -> Role:
    """QA engineers: the admin role."""
    return state.keys.require(key, Role.ADMIN)


InspectRole = Annotated[Role, Depends(require_inspect)]
AdminRole = Annotated[Role, Depends(require_admin)]
