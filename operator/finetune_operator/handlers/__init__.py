"""kopf wiring only: watches, indices and start-up. Importing this package registers every handler.

No handler module imports another: they meet in reconciler.wake.
"""

from . import children, lifecycle, resources

__all__ = ["children", "lifecycle", "resources"]
