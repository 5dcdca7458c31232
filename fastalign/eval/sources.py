"""Inputs for evaluation by name: the names ``fastalign.eval.sources`` has always offered,
now served by the package's one resolver (``fastalign.io.resolve``; see its docstring for
the ``things:KEY`` shorthands and the file formats)."""

from __future__ import annotations

from ..io.resolve import THINGS_PREFIX, resolve_features, resolve_triplets
from ..io.resolve import resolve_categories as load_categories
from ..io.resolve import resolve_labels as load_labels

__all__ = ["THINGS_PREFIX", "load_categories", "load_labels", "resolve_features", "resolve_triplets"]
