"""Input and output guardrails: checks with verdicts, run by the request stages."""
