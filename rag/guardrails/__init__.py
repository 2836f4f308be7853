"""Guardrails: input and output checks of a stack (issue 11).

``InputGuard`` runs in two phases around the single embedding of the question: ``prepare`` (normalisation and PII
redaction, before embedding) and ``check`` (injection, topic, moderation, after embedding, reusing the vector).
``OutputGuard`` checks the answer (grounding, format, PII leak, safety, business rules); ``StreamGuard`` does so
sentence by sentence for token streams. Every check returns a :class:`rag.guardrails.types.Verdict`.
"""
