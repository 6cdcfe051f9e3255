"""`python -m flpg.cli`: the `flpg` command."""

from __future__ import annotations

from flpg.cli import main

main()
