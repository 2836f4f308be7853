"""The one authorisation table: every action with the minimal role it needs, and every HTTP route's action.

Roles are ordered: ``reader`` < ``operator`` < ``admin``; a role may do everything a lower one may. ``public``
actions need no credential at all (liveness and readiness probes, the playground page and the API docs, which
carry no data: the page asks for a key before it queries). A route missing from :data:`ROUTES` is refused (fail
closed), and a test walks every route of the app against this table for every role.

CLI commands that change the platform (promote, rollback, keys, audit, ingestion, evaluation, retraining) run on
the machine that holds ``RAGOPS_HOME``; they are listed here under the role an HTTP or Prefect trigger of the same
action must have, so the table stays the one place that says who may do what.
"""

from __future__ import annotations

from enum import IntEnum

from rag.security.errors import PermissionDenied


class Role(IntEnum):
    """Ordered roles; comparison is rank (``Role.admin >= Role.operator``)."""

    public = 0
    reader = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role called ``name`` (``reader``, ``operator``, ``admin``); ``ValueError`` otherwise."""
        try:
            role = cls[name]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; choose one of reader, operator, admin") from None
        if role is cls.public:
            raise ValueError("'public' is not a role a credential can have; choose reader, operator or admin")
        return role


KEY_ROLES = ("reader", "operator", "admin")
"""The roles a key or token may carry."""

ACTIONS: dict[str, Role] = {
    # the service
    "health": Role.public,
    "docs": Role.public,
    "playground": Role.public,
    "query": Role.reader,
    "feedback": Role.reader,
    "sources.read": Role.reader,
    "models.list": Role.reader,
    "stack.show": Role.operator,
    "review.read": Role.operator,
    "review.label": Role.operator,
    "metrics.read": Role.operator,
    # platform actions (CLI today; any HTTP or Prefect trigger must map to these)
    "stack.list": Role.operator,
    "evaluate": Role.operator,
    "ingest": Role.operator,
    "retrain": Role.operator,
    "stack.promote": Role.admin,
    "stack.rollback": Role.admin,
    "stack.experiment": Role.admin,  # start or stop an A/B experiment (it changes what callers are answered by)
    "stack.experiment.status": Role.operator,
    "keys.create": Role.admin,
    "keys.list": Role.admin,
    "keys.revoke": Role.admin,
    "audit.read": Role.admin,
    "audit.verify": Role.admin,
}
"""Action -> the least role allowed to do it."""

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "health",
    ("GET", "/readyz"): "health",
    ("GET", "/"): "playground",
    ("GET", "/review"): "playground",
    ("GET", "/docs"): "docs",
    ("GET", "/openapi.json"): "docs",
    ("POST", "/v1/query"): "query",
    ("POST", "/v1/chat/completions"): "query",
    ("GET", "/v1/models"): "models.list",
    ("POST", "/v1/feedback"): "feedback",
    ("GET", "/v1/sources/{chunk_id}"): "sources.read",
    ("GET", "/v1/stack"): "stack.show",
    ("GET", "/metrics"): "metrics.read",
    ("GET", "/v1/review"): "review.read",
    ("GET", "/v1/review/{request_id}"): "review.read",
    ("POST", "/v1/review/{request_id}"): "review.label",
}
"""(method, route path template) -> action. HEAD is treated as GET. Static file mounts (``/static``,
``/docs-assets``) are public and never reach this table."""


def route_action(method: str, path: str) -> str | None:
    """The action of a route, or None when the route is not in the table (which the gate refuses)."""
    return ROUTES.get(("GET" if method == "HEAD" else method, path))


def required_role(action: str) -> Role:
    """The least role ``action`` needs (``KeyError`` for an action not in the table: a programming error)."""
    return ACTIONS[action]


def allowed(role: str, action: str) -> bool:
    """Whether a principal of ``role`` may do ``action``."""
    need = ACTIONS[action]
    if need is Role.public:
        return True
    try:
        have = Role[role]
    except KeyError:
        return False
    return have >= need


def authorize(role: str, action: str) -> None:
    """Raise :class:`PermissionDenied` unless ``role`` may do ``action``."""
    if not allowed(role, action):
        raise PermissionDenied(f"role {role!r} may not {action} (needs {ACTIONS[action].name})")


def expected_status(role: str | None, action: str) -> int | None:
    """What a request for ``action`` by ``role`` (None: no credential) must get: 401, 403, or None (allowed)."""
    if ACTIONS[action] is Role.public:
        return None
    if role is None:
        return 401
    return None if allowed(role, action) else 403
