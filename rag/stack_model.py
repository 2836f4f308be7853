"""Models-from-code entry point: MLflow runs this file when it loads a registered ``rag-stack`` version.

It is copied into every logged model; it only names the model class. Do not import it from library code.
"""

import mlflow.models

from rag.pyfunc import RagStackModel

mlflow.models.set_model(RagStackModel())
