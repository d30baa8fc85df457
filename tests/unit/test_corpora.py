"""Tests that every built-in corpus loads on this machine (needs the corpus packages)."""

from __future__ import annotations

import pytest

from worker.data import CORPORA, Example, load_corpus


@pytest.mark.corpora
@pytest.mark.parametrize("name", sorted(CORPORA))
def test_builtin_corpus_loads(name: str) -> None:
    examples = load_corpus(name)
    labels = {ex.label for ex in examples}
    assert len(labels) >= 2
    assert len(examples) >= 300
    assert all(isinstance(ex, Example) and ex.text.strip() for ex in examples)
    assert len({ex.text for ex in examples}) == len(examples), "duplicate texts"
    assert load_corpus(name) == examples, "loader must be deterministic"


def test_unknown_corpus_raises() -> None:
    with pytest.raises(ValueError, match="no_such_corpus.*wordnet_pos"):
        load_corpus("no_such_corpus")
