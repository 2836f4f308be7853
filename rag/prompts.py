"""Prompt templates in MLflow's Prompt Registry, referenced by stacks by name and version.

A team edits a prompt the way it edits any other part of a stack: a new prompt version is registered
(``ragops prompt register``), a stack version that references it is registered (``ragops stack register --prompt
NAME@VERSION``), and that stack goes through the deployment gate before it is served. The stack stores the reference
*and* the resolved text, so its fingerprint changes with the prompt, the served stack never depends on the prompt
registry being reachable, and the MLflow UI shows the prompt version linked to the stack's model.

Templates: ragops fills ``{question}`` and ``{context}`` with ``str.format`` (literal braces doubled); MLflow's
registry writes variables as ``{{question}}`` (other braces literal). :func:`to_mlflow` and :func:`from_mlflow`
convert between the two, so what a user registers in either form round-trips exactly.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING

from rag.errors import StackError
from rag.types import PromptRef

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from rag.settings import RagSettings

VARIABLES = ("question", "context")
_MLFLOW_VARIABLE = re.compile(r"\{\{\s*(question|context)\s*\}\}")


def to_mlflow(template: str) -> str:
    """A ragops template (``{question}``, literal braces doubled) in MLflow's form (``{{question}}``)."""
    try:
        return template.format(**{name: "{{" + name + "}}" for name in VARIABLES})
    except (KeyError, IndexError, ValueError) as exc:
        raise StackError(
            f"the prompt template cannot be filled ({exc!r}): only {{question}} and {{context}} may appear in "
            "braces (write literal braces as {{ and }})"
        ) from exc


def from_mlflow(template: str) -> str:
    """An MLflow template (``{{question}}``, other braces literal) in ragops' form (``{question}``)."""
    escaped = template.replace("{", "{{").replace("}", "}}")
    return re.sub(r"\{\{\{\{\s*(question|context)\s*\}\}\}\}", r"{\1}", escaped)


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` (the latest version when none is given)."""
    name, _, version = text.partition("@")
    if not name or (version and not version.isdigit()):
        raise StackError(f"a prompt is named NAME or NAME@VERSION, got {text!r}")
    return name, int(version) if version else None


class PromptRegistry:
    """Register and read prompt templates in the MLflow Prompt Registry of ``settings``."""

    def __init__(self, settings: RagSettings) -> None:
        self.settings = settings

    @cached_property
    def client(self) -> MlflowClient:
        """An MLflow client on the configured registry."""
        from pipelines.tracking import mlflow_client

        return mlflow_client(self.settings)

    def register(self, name: str, template: str, *, message: str | None = None) -> PromptRef:
        """Store ``template`` (ragops form) as the next version of prompt ``name``; both variables are required."""
        for variable in VARIABLES:
            if "{" + variable + "}" not in template:
                raise StackError(f"the prompt template must contain {{{variable}}}")
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.register_prompt(name=name, template=to_mlflow(template), commit_message=message)
        except MlflowException as exc:  # e.g. a name MLflow refuses
            raise StackError(f"prompt {name!r} cannot be registered: {exc.message}") from exc
        return PromptRef(name=name, version=int(version.version))

    def resolve(self, name: str, version: int | None = None) -> tuple[PromptRef, str]:
        """The reference (latest version when ``version`` is None) and its template in ragops' form."""
        from mlflow.exceptions import MlflowException

        try:
            if version is None:
                found = self.client.search_prompt_versions(name)
                versions = [int(v.version) for v in found]
                if not versions:
                    raise StackError(f"prompt {name!r} has no version; register one with `ragops prompt register`")
                version = max(versions)
            prompt = self.client.get_prompt_version(name, str(version))
        except MlflowException as exc:
            raise StackError(f"prompt {name}@{version} is not in the prompt registry: {exc.message}") from exc
        if prompt is None or not isinstance(prompt.template, str):
            raise StackError(f"prompt {name}@{version} is not in the prompt registry (or is not a text prompt)")
        return PromptRef(name=name, version=int(version)), from_mlflow(prompt.template)

    def link(self, ref: PromptRef, model_id: str) -> None:
        """Show the prompt version on the stack's logged model in the MLflow UI."""
        self.client.link_prompt_version_to_model(ref.name, str(ref.version), model_id)
