"""The ``ragops`` command line: thin commands over the library, errors translated to messages and exit codes.

One module per command group (:mod:`flows.cli.ingest`, :mod:`flows.cli.stack`, ...) registers its commands on the
root app of :mod:`flows.cli.common` when imported; importing this package imports them all, in the order
``ragops --help`` lists them.
"""

from importlib import import_module

from flows.cli.common import app

COMMAND_MODULES = (
    "ingest",
    "platform",
    "stack",
    "review",
    "prompt",
    "evaluate",
    "router",
    "serving",
    "guardrails",
    "monitor",
    "security",
    "spend",
    "capacity",
    "erase",
)
"""The command groups, in help order (each module registers its commands on :data:`app` when imported)."""

for _name in COMMAND_MODULES:
    import_module(f"flows.cli.{_name}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ragops")


__all__ = ["app", "main"]
