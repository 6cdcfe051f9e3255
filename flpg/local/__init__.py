"""One machine with no set-up.

The embedded PostgreSQL cluster, `flpg up`/`down`, the demo, and `flpg new`.
"""
