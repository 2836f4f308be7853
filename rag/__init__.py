"""The query side of ragops: stacks (registry and pyfunc), retrieval over the versioned index, and answering.

Public API (import from the submodules; importing ``rag`` itself loads nothing heavy):

- ``rag.types``: ``StackConfig`` (+ ``RetrievalConfig``, ``AnswererConfig``, ``LlmConfig``), ``RetrievedChunk``,
  ``Citation``, ``Answer``, ``ABSTAIN_TEXT``.
- ``rag.retrieve``: ``Retriever(reader, embedder, config)`` with ``retrieve`` / ``retrieve_many``.
- ``rag.answer``: ``ExtractiveAnswerer(config)`` with ``answer`` / ``stream``.
- ``rag.engine``: ``RagEngine.open(settings, config)`` with ``ask`` / ``ask_many``.
- ``rag.stack``: ``StackRegistry(settings)`` with ``register``, ``get``, ``list``, ``champion``, ``promote``,
  ``rollback``, ``history``.
- ``rag.pyfunc``: ``RagStackModel``, the MLflow pyfunc behind ``models:/rag-stack@champion``.
- ``rag.errors``: ``RagError`` and its subclasses.
"""
