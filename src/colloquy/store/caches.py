"""The in-process cache registry, where the store modules have always imported it from; it
lives in :mod:`colloquy.caches` (no dependencies) so that models can register too."""

from ..caches import forget_cached, register_cache

__all__ = ["forget_cached", "register_cache"]
