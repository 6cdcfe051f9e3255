"""Flower's built-in mods (`flwr.clientapp.mod`) for the Message API.

A mod is `(msg, ctxt, call_next) -> reply`; `ClientApp(mods=[...])` wraps every
handler in them and `@app.train(mods=[...])` one handler, the first mod outermost.

- `fixedclipping_mod`, `adaptiveclipping_mod`: clip the reply's update to the
  `clipping_norm` of the instruction's config (centraldp.py);
- `LocalDpMod(clipping_norm, sensitivity, epsilon, delta)`: clip and add Gaussian
  noise (localdp.py);
- `message_size_mod`, `arrays_size_mod`: log sizes (comms.py).
"""

from __future__ import annotations

from flpg.clientapp.mod.centraldp import adaptiveclipping_mod, fixedclipping_mod
from flpg.clientapp.mod.comms import arrays_size_mod, message_size_mod
from flpg.clientapp.mod.localdp import LocalDpMod

__all__ = [
    "LocalDpMod",
    "adaptiveclipping_mod",
    "arrays_size_mod",
    "fixedclipping_mod",
    "message_size_mod",
]
