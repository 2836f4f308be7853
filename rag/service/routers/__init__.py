"""The service's routes, one router per concern: health, query (and OpenAI chat), feedback and sources, pages."""
