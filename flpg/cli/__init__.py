"""The `flpg` command line (`flpg = "flpg.cli:main"`).

- `app`: the `main` group and the registration of the command groups;
- `runs`, `workers`, `local`, `db`: one module per command group; each command
  parses options, calls one function, and hands the result to `render`;
- `render`: the only place that formats output (tables, lines, `--format json`);
- `_base`: the `--db`/`--format` options, opening the database, the error handler.
"""

from __future__ import annotations

from flpg.cli.app import main

__all__ = ["main"]
