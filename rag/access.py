"""Which chunks a principal may see: its tenant and groups as a filter the engine applies inside the search.

Why here and in this form: a post-filter over the top-k returns fewer (or no) results and leaks rank information,
so the scope is a :class:`pipelines.store.PointFilter` ANDed into every dense, sparse and hybrid search; top-k is
filled from permitted chunks only. The same rule, evaluated on a payload (:meth:`AccessScope.permits`), guards the
paths that read a chunk by id (``GET /v1/sources/{chunk_id}``, feedback).

The rule (documents carry ``tenant`` and ``acl`` payload from ingestion: ``--tenant`` or sidecar metadata):

- **Tenant.** A principal with a tenant sees only documents of that tenant. A principal without a tenant is a
  single-tenant principal: it sees only documents without a tenant, except role ``admin``, which sees every tenant.
- **ACL.** A document without ``acl`` is visible to every principal that may see its tenant; a document with an
  ``acl`` list only to principals sharing one of its groups. Role ``admin`` is not bound by ACLs.
- **Request filters only narrow.** The tenant and the groups come from the principal (``ctx.principal``), never from
  the request body; a request's own ``filters`` are ANDed with the scope, so a filter naming another tenant returns
  nothing.

Code that runs in process without a credential (evaluation, the CLI, a loopback service with auth off) acts as the
one trusted principal :data:`rag.stages.context.LOCAL`, whose scope is :data:`UNRESTRICTED`; the library's
``Retriever.retrieve`` called without a scope searches with it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.store import Match, PointFilter

if TYPE_CHECKING:
    from rag.stages.context import Principal

TENANT_KEY = "tenant"
ACL_KEY = "acl"
ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class AccessScope:
    """What a principal may see: one tenant (or untenanted documents, or all), and its ACL groups (or all)."""

    tenant: str | None = None
    all_tenants: bool = False
    groups: tuple[str, ...] = ()
    all_groups: bool = False

    def narrow(self, flt: PointFilter | None) -> PointFilter | None:
        """``flt`` (the request's filters) ANDed with this scope; None when both admit everything."""
        base = flt or PointFilter()
        matches: list[Match] = []
        missing: list[str] = []
        if not self.all_tenants:
            if self.tenant is None:
                missing.append(TENANT_KEY)
            else:
                matches.append(Match(TENANT_KEY, (self.tenant,)))
        if not self.all_groups:
            if self.groups:
                matches.append(Match(ACL_KEY, self.groups, or_missing=True))
            else:
                missing.append(ACL_KEY)
        if not matches and not missing:
            return flt
        return PointFilter(
            (*base.matches, *matches), base.window, base.ranges, (*base.missing, *missing), base.live_idf
        )

    def permits(self, payload: Mapping[str, Any]) -> bool:
        """Whether a chunk with this payload is inside the scope (the same rule as :meth:`narrow`)."""
        tenant = payload.get(TENANT_KEY)
        if not self.all_tenants and (tenant or None) != self.tenant:
            return False
        if self.all_groups:
            return True
        acl = payload.get(ACL_KEY)
        if acl is None or acl == []:
            return True
        listed = {acl} if isinstance(acl, str) else set(acl)
        return bool(listed & set(self.groups))


UNRESTRICTED = AccessScope(all_tenants=True, all_groups=True)
"""The scope of the in-process trusted principal (``scope_of(LOCAL)``): every tenant, every ACL."""


def scope_of(principal: Principal) -> AccessScope:
    """The scope of ``principal`` by the rule in this module's docstring."""
    admin = principal.role == ADMIN_ROLE
    return AccessScope(
        tenant=principal.tenant or None,
        all_tenants=admin and not principal.tenant,
        groups=tuple(principal.groups),
        all_groups=admin,
    )
