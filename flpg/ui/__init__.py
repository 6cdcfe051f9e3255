"""`flpg ui`: a live, read-only web dashboard of one database (the `ui` extra).

- `app`: the ASGI app (Starlette): pages, their JSON, the event stream;
- `events`: the one LISTEN connection, fanned out to browsers as server-sent events;
- `queries`: what the pages read (named queries of `sql/ui.sql`, read-only connections);
- `server`: binding the address and serving with uvicorn;
- `templates/`, `static/`: the HTML, the small vanilla JS and CSS, and uPlot (MIT),
  the chart library, shipped inside the wheel (no CDN).

Importing this package needs starlette (`app`) and uvicorn (`server`); `flpg.cli.ui`
checks for them first.
"""
