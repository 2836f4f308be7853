"""Errors of the security package.

SecurityError
 ├── AuthenticationFailed    no credential, or an unknown, malformed, expired or revoked one: HTTP 401
 ├── PermissionDenied        a known principal whose role is below the action's: HTTP 403
 ├── UnknownKey              ``keys revoke`` of a prefix that does not exist
 └── AuditError              the audit store cannot be opened or written
"""

from __future__ import annotations

from rag.errors import RagError


class SecurityError(RagError):
    """Base of the security package's errors."""


class AuthenticationFailed(SecurityError):
    """The request carries no valid credential. ``reason`` is a short code kept for the audit trail."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(SecurityError):
    """The principal is known but its role does not allow the action."""


class UnknownKey(SecurityError, LookupError):
    """No API key has this prefix."""


class AuditError(SecurityError):
    """The audit store cannot be used (bad URL, unreachable database)."""
