"""Storage behind one small interface; backends are found by URI scheme through a lazy registry."""

from infra.storage.base import REGISTRY, Storage, storage_for
from infra.storage.uri import Uri, parse

open_storage = storage_for

__all__ = ["REGISTRY", "Storage", "Uri", "open_storage", "parse", "storage_for"]
