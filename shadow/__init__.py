"""strangler: shadow package."""
