"""strangler: proxy package."""
