"""strangler: extracted package."""
