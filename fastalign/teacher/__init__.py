"""The teacher: an affine transform of frozen features fitted to human odd-one-out choices."""

from .transform import AffineTransform

__all__ = ["AffineTransform"]
