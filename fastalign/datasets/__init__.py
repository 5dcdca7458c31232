"""Data bundled with fastalign."""

from .things import ThingsData, load_things

__all__ = ["ThingsData", "load_things"]
