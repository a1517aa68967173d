"""The extracted Order service: pure domain, shared schema, repository, use cases, aiohttp app.

Modules: `domain` (states, transitions, fees; no I/O), `schema` (the tables shared with the
monolith), `db` (engines and transactions), `repository`, `service`, `contract` (the legacy JSON
contract), `app` (`create_app(db_url)`), `server` (`strangler extracted`).
"""

__all__: list[str] = []
