"""Who may do what, and a trail of what was done: API keys, roles, the authorisation table, the audit chain.

:mod:`rag.security.keys` issues and checks API keys (only a keyed hash is stored), :mod:`rag.security.authz` is the
one table of actions and routes with the minimal role each needs, :mod:`rag.security.audit` is the append-only,
hash-chained trail, and :mod:`rag.security.gate` puts them together for the service. Nothing here imports FastAPI:
the HTTP side lives in :mod:`rag.service.auth`.
"""
