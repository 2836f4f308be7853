"""The input forms the pyfunc model accepts (what `mlflow models serve` and load_model(...).predict pass in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rag.errors import BadQuery
from rag.pyfunc import questions_and_filters


@pytest.mark.parametrize(
    ("given", "questions", "filters"),
    [
        (["a?", "b?"], ["a?", "b?"], [None, None]),
        (np.array(["a?", "b?"]), ["a?", "b?"], [None, None]),  # {"inputs": [...]} through the scoring server
        ("a?", ["a?"], [None]),
        ({"questions": ["a?"]}, ["a?"], [None]),
        ({"question": "a?", "tenant": "acme"}, ["a?"], [{"tenant": "acme"}]),
        ([{"question": "a?", "source": "x.md"}, {"question": "b?"}], ["a?", "b?"], [{"source": "x.md"}, None]),
        (pd.DataFrame({"question": ["a?"], "tenant": ["acme"]}), ["a?"], [{"tenant": "acme"}]),
        (pd.DataFrame({0: ["a?"]}), ["a?"], [None]),
    ],
)
def test_input_forms(given: object, questions: list[str], filters: list[object]) -> None:
    assert questions_and_filters(given) == (questions, filters)


@pytest.mark.parametrize("given", [42, [1, 2], {"text": "a?"}])
def test_unusable_inputs_are_bad_queries(given: object) -> None:
    with pytest.raises(BadQuery):
        questions_and_filters(given)
