"""The request path as a chain of stages (:mod:`rag.stages.chain`), shared by the service and evaluation.

One module per stage: :mod:`~rag.stages.validate`, :mod:`~rag.stages.embed`, :mod:`~rag.stages.retrieve`,
:mod:`~rag.stages.answer`, :mod:`~rag.stages.record`; :mod:`~rag.stages.build` assembles them for a stack.
"""
