"""Data bundled with fastalign, and loaders for published human datasets (the Levels dataset)."""

from .levels import LevelsData, load_levels
from .things import ThingsData, load_things

__all__ = ["LevelsData", "ThingsData", "load_levels", "load_things"]
