"""The injection classifier in the MLflow registry: logged as a pyfunc model under ``injection-classifier``, referenced
by a stack as ``models:/injection-classifier/N`` and materialised once under ``<home>/models/injection-classifier/N``
(like the embedder), so serving needs no training and no network beyond the tracking server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import GuardrailError
from rag.guardrails.classifier import InjectionClassifier

if TYPE_CHECKING:
    from rag.settings import RagSettings

INJECTION_MODEL = "injection-classifier"
ARTIFACT = "classifier"


def _pyfunc_class() -> Any:
    from mlflow.pyfunc import PythonModel

    class InjectionPyfunc(PythonModel):
        """Scores texts with the bundled MiniLM + the classifier (for use outside the service)."""

        def load_context(self, context: Any) -> None:
            self.classifier = InjectionClassifier.load(Path(context.artifacts[ARTIFACT]))

        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            from pipelines.embed import Embedder
            from pipelines.settings import EmbedderSettings

            texts = [str(t) for t in model_input["text"]]
            embedder = Embedder(EmbedderSettings(), cache_dir=Path(os.environ.get("RAGOPS_CACHE", ".ragops/cache")))
            return self.classifier.scores(texts, embedder.encode(texts))

    return InjectionPyfunc()


def log_classifier(classifier: InjectionClassifier, scratch: Path) -> str:
    """Log ``classifier`` in the active run and register it; returns ``models:/injection-classifier/N``."""
    import mlflow
    from mlflow import MlflowClient

    folder = scratch / ARTIFACT
    classifier.save(folder)
    info = mlflow.pyfunc.log_model(
        name="injection_classifier",
        python_model=_pyfunc_class(),
        artifacts={ARTIFACT: str(folder)},
        pip_requirements=["scikit-learn", "scipy", "numpy", "joblib"],
    )
    version = mlflow.register_model(
        info.model_uri, INJECTION_MODEL, tags={"embedder_sha256": classifier.embedder_sha256}
    )
    MlflowClient().set_model_version_tag(INJECTION_MODEL, version.version, "threshold", f"{classifier.threshold:.6f}")
    return f"models:/{INJECTION_MODEL}/{version.version}"


def load_classifier(settings: RagSettings, model_uri: str) -> InjectionClassifier:
    """The classifier a stack names, materialised under ``<home>/models`` on first use.

    Raises:
        GuardrailError: The registry does not hold that model version.
    """
    name, version = model_uri.removeprefix("models:/").split("/")
    target = settings.models_dir / name / version
    if not (target / "meta.json").is_file():
        from mlflow.exceptions import MlflowException

        from pipelines.tracking import configure_mlflow

        mlflow = configure_mlflow(settings)
        scratch = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
        scratch.mkdir(parents=True)
        try:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(scratch)))
            except MlflowException as exc:
                raise GuardrailError(f"cannot fetch {model_uri} from the registry: {exc.message}") from exc
            found = next(local.rglob("meta.json"), None)
            if found is None:
                raise GuardrailError(f"{model_uri} holds no injection classifier (meta.json missing)")
            try:
                os.replace(found.parent, target)
            except OSError:
                if not (target / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return InjectionClassifier.load(target)
