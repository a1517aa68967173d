"""strangler: legacy package."""
