"""What the query service exports for monitoring: Prometheus metrics (:mod:`rag.monitoring.metrics`)."""
