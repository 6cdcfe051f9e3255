"""What one invocation of `vs_flower.py` runs: the systems (with flpg variants) and
the configurations (a matrix, a scaling sweep, or listed cases).

- systems: `flpg`, `floor`, `flower` and `flpg:NAME` for each `--variant
  NAME="k=v ..."` (flpg with those run-config items appended). `floor` measures
  the logged and the UNLOGGED chunk table (two outcomes, see `floor`).
- configurations: the product of `--nodes` and `--sizes` (sizes outer); a sweep
  (`--sweep n`: N in 2..64 at 16 MB; `--sweep size`: 1 MB..256 MB at N=8; either
  axis overridable); or `--cases 2x1.5GB,8x128MB`, exactly those pairs in that order.

Every parser raises ValueError with a message fit for `argparse.error`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.results import Config, parse_size

BASE_SYSTEMS = ("floor", "flpg", "flower")
SWEEP_NODES = {"n": "2,4,8,16,32,64", "size": "8"}
SWEEP_SIZES = {"n": "16MB", "size": "1MB,4MB,16MB,64MB,256MB"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
_CASE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\S+)\s*$")


@dataclass(frozen=True)
class System:
    """One entry of `--systems`: a system, and for flpg which variant of it."""

    name: str
    """floor | flpg | flower"""
    variant: str = ""
    run_config: str = ""
    """`k=v` items appended to flpg's run config (the variant's; empty otherwise)."""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name


def parse_variants(items: Sequence[str]) -> dict[str, str]:
    """`--variant NAME=k=v ...` values -> {NAME: "k=v ..."}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, config = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name) or not config.strip():
            raise ValueError(
                f'--variant takes NAME="k=v ..." (NAME lowercase letters, digits, - or _), '
                f"got {item!r}"
            )
        if name in out:
            raise ValueError(f"--variant {name} is given twice")
        out[name] = config.strip()
    return out


def parse_systems(text: str, variants: dict[str, str]) -> list[System]:
    """`--systems` -> entries in the order given. `flpg:NAME` needs `--variant NAME=...`;
    every variant must be used; an entry may not repeat."""
    out: list[System] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, variant = item.partition(":")
        if name not in BASE_SYSTEMS or (variant and name != "flpg"):
            raise ValueError(
                f"--systems takes any of {','.join(BASE_SYSTEMS)} and flpg:NAME; got {item!r}"
            )
        if variant and variant not in variants:
            raise ValueError(f'--systems {item}: no --variant {variant}="k=v ..." given')
        entry = System(name, variant, variants.get(variant, ""))
        if entry in out:
            raise ValueError(f"--systems names {item} twice")
        out.append(entry)
    if not out:
        raise ValueError("--systems names no system")
    unused = sorted(set(variants) - {s.variant for s in out})
    if unused:
        raise ValueError(f"--variant {unused[0]} is not used: add flpg:{unused[0]} to --systems")
    return out


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be integers >= 1, got {text!r}")
    return values


def parse_sizes(text: str, what: str = "--sizes") -> list[int]:
    try:
        values = [parse_size(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must name sizes of at least 1B, got {text!r}")
    return values


def parse_cases(text: str) -> list[tuple[int, int]]:
    """`2x1.5GB,8x128MB` -> [(2, 1.5 GiB in bytes), (8, 128 MiB)], in that order."""
    out: list[tuple[int, int]] = []
    for item in (s for s in text.split(",") if s.strip()):
        match = _CASE.match(item)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"--cases takes NxSIZE items like 8x128MB, got {item!r}")
        out.append((int(match.group(1)), parse_sizes(match.group(2), "--cases")[0]))
    if not out:
        raise ValueError("--cases names no case")
    return out


def plan_configs(
    *,
    rounds: int,
    nodes: str | None,
    sizes: str | None,
    sweep: str | None = None,
    cases: str | None = None,
    quick: bool = False,
) -> list[Config]:
    """The configurations to run, in order (see the module docstring). `nodes` and
    `sizes` default to the sweep's axes, else 2,8,32 x 4B,1MB,16MB,128MB (quick:
    2,8 x 4B,1MB); they may not be combined with `cases`."""
    if cases is not None:
        if nodes is not None or sizes is not None or sweep is not None:
            raise ValueError("--cases lists (N, size) pairs: drop --nodes, --sizes, --sweep")
        return [Config(n, size, rounds) for n, size in parse_cases(cases)]
    if sweep is not None and sweep not in SWEEP_NODES:
        raise ValueError(f"--sweep takes n or size, got {sweep!r}")
    default_nodes = SWEEP_NODES[sweep] if sweep else "2,8" if quick else "2,8,32"
    default_sizes = SWEEP_SIZES[sweep] if sweep else "4B,1MB" if quick else "4B,1MB,16MB,128MB"
    node_list = parse_ints(nodes or default_nodes, "--nodes")
    size_list = parse_sizes(sizes or default_sizes)
    return [Config(n, size, rounds) for size in size_list for n in node_list]
