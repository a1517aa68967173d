"""The reference legacy monolith's Order API, quirks included (see legacy/README.md).

Modules: `app` (`create_app(db_url)`), `seed` (deterministic demo data), `server`
(`strangler legacy`).
"""

__all__: list[str] = []
