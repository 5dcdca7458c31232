"""Helpers every stage shares, written once: progress, JSON cleaning, seeds, timing,
scalar search, figures, and the human-data semantics that teacher and evaluation
both need (calibration metrics, choice distributions, category levels).

This package sits in the base layer: it may use ``ops`` (below it) but never a
stage (``teacher``, ``triplets``, ``distill``, ``eval``) or anything above them.
"""
