"""The query service: a thin FastAPI app over :class:`rag.engine.RagEngine` serving the champion stack."""
