"""The pure parts of the benchmark harness: what `vs_flower.py` plans to run
(sweeps, cases, systems with flpg variants), its JSON results file, and the curves
`plot_curves.py` draws from such files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from harness.jsonlog import JsonLog, load  # noqa: E402
from harness.plan import System, parse_cases, parse_systems, parse_variants, plan_configs  # noqa: E402
from harness.results import Config, Outcome  # noqa: E402

MB = 1 << 20


def test_cases_are_exact_pairs_in_order() -> None:
    assert parse_cases("2x1.5GB, 8x128MB,32X4B") == [(2, 3 << 29), (8, 128 * MB), (32, 4)]
    for bad in ("8*128MB", "0x1MB", "8x12XB", ""):
        with pytest.raises(ValueError, match="--cases"):
            parse_cases(bad)


def test_sweeps_and_overrides() -> None:
    by_n = plan_configs(rounds=3, nodes=None, sizes=None, sweep="n")
    assert [(c.nodes, c.nbytes) for c in by_n] == [(n, 16 * MB) for n in (2, 4, 8, 16, 32, 64)]
    by_size = plan_configs(rounds=2, nodes=None, sizes=None, sweep="size")
    assert [(c.nodes, c.nbytes // MB) for c in by_size] == [
        (8, 1), (8, 4), (8, 16), (8, 64), (8, 256)
    ]  # fmt: skip
    assert {c.rounds for c in by_size} == {2}
    small = plan_configs(rounds=3, nodes="2,4", sizes="1MB", sweep="n")
    assert [(c.nodes, c.nbytes) for c in small] == [(2, MB), (4, MB)]
    cases = plan_configs(rounds=3, nodes=None, sizes=None, cases="8x128MB,2x1MB")
    assert cases == [Config(8, 128 * MB, 3), Config(2, MB, 3)]
    with pytest.raises(ValueError, match="drop --nodes"):
        plan_configs(rounds=3, nodes="2", sizes=None, cases="2x1MB")
    matrix = plan_configs(rounds=3, nodes=None, sizes=None, quick=True)
    assert [(c.nodes, c.nbytes) for c in matrix] == [(2, 4), (8, 4), (2, MB), (8, MB)]


def test_systems_with_variants() -> None:
    variants = parse_variants(["int8=flpg.reply-codec='int8'"])
    assert variants == {"int8": "flpg.reply-codec='int8'"}
    systems = parse_systems("flpg,flpg:int8,floor,flower", variants)
    assert [s.key for s in systems] == ["flpg", "flpg:int8", "floor", "flower"]
    assert systems[1] == System("flpg", "int8", "flpg.reply-codec='int8'")
    with pytest.raises(ValueError, match="no --variant"):
        parse_systems("flpg:fp16", variants)
    with pytest.raises(ValueError, match="not used"):
        parse_systems("flpg,floor", variants)
    with pytest.raises(ValueError, match="twice"):
        parse_systems("flpg,flpg", {})
    with pytest.raises(ValueError, match="--systems takes"):
        parse_systems("floor:unlogged", {})
    with pytest.raises(ValueError, match="NAME="):
        parse_variants(["int8"])


def write_results(path: Path, sweep: str | None, outcomes: list[Outcome], label: str = "") -> None:
    log = JsonLog(path, ["--test"], label, {"sweep": sweep, "rounds": 3})
    log.set_versions(postgresql="15.20", flower="1.42.0")
    for outcome in outcomes:
        log.add(outcome, "matrix")
    log.finish()


def outcome(key: str, nodes: int, nbytes: int, rounds: list[float] | None) -> Outcome:
    system, _, variant = key.partition(":")
    o = Outcome(system, Config(nodes, nbytes, 3), variant=variant)
    if rounds is None:
        o.status, o.reason = "timeout", "timed out after 900 s"
    else:
        o.round_seconds = rounds
    return o


def test_json_results_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    ok = outcome("floor:unlogged", 8, MB, [0.5, 0.2, 0.4])
    ok.extra["rate"] = float("nan")
    ok.rss_mib["pg"] = 150.0
    write_results(path, "n", [ok, outcome("flower", 64, MB, None)], label="head")
    doc = load(path)
    first, second = doc["runs"]
    assert first["key"] == "floor:unlogged" and first["variant"] == "unlogged"
    assert first["median_round"] == pytest.approx(0.3)
    assert first["extra"] == {"rate": None} and first["rss_mib"] == {"pg": 150.0}
    assert first["label"] == "head" and first["size"] == "1MB"
    assert second["status"] == "timeout" and second["median_round"] is None
    assert doc["versions"]["flower"] == "1.42.0" and doc["finished_at"] is not None
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "other.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match=r"not a vs_flower\.py results file"):
        load(tmp_path / "other.json")


def sweep_files(tmp_path: Path) -> list[Path]:
    n = tmp_path / "n.json"
    write_results(
        n,
        "n",
        [
            outcome("flpg", 2, 16 * MB, [1.0, 0.4, 0.4]),
            outcome("flpg", 8, 16 * MB, [2.0, 1.2, 1.2]),
            outcome("flower", 2, 16 * MB, [5.0, 4.0, 4.0]),
            outcome("flower", 8, 16 * MB, None),
            outcome("floor", 8, 16 * MB, [0.9, 0.8, 0.8]),
        ],
    )
    again = tmp_path / "again.json"
    write_results(again, None, [outcome("flpg", 8, 16 * MB, [2.0, 1.0, 1.0])], label="")
    return [n, again]


def test_curve_points(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import plot_curves as pc

    docs = [load(p) for p in sweep_files(tmp_path)]
    runs = pc.matrix_runs(docs)
    assert pc.pick_fixed(docs, "nodes") == 16 * MB
    assert pc.pick_fixed(docs, "size") == 8  # no size sweep: the default N
    lines = pc.curve_points(runs, "nodes", 16 * MB)
    assert lines["flpg"] == [pc.Point(2, 0.4, "ok"), pc.Point(8, 1.0, "ok")]  # later file wins
    assert lines["Flower"] == [pc.Point(2, 4.0, "ok"), pc.Point(8, None, "timeout")]
    assert lines["floor (logged)"] == [pc.Point(8, 0.8, "ok")]
    assert pc.curve_points(runs, "nodes", MB) == {}
    by_size = pc.curve_points(runs, "size", 8)
    assert sorted(by_size) == ["Flower", "floor (logged)", "flpg"]
    assert by_size["flpg"] == [pc.Point(16 * MB, 1.0, "ok")]
    labelled: dict[str, Any] = {"key": "flpg:int8", "system": "flpg", "label": "head"}
    assert pc.series_name(labelled) == "flpg:int8 [head]"


def test_plot_writes_pngs_and_skips_empty_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    import plot_curves as pc

    files = sweep_files(tmp_path)
    out = tmp_path / "png"
    assert pc.main([*map(str, files), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("curve_nodes.png", "curve_size.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert "Flower: 2=4.000s, 8=timeout" in printed
    assert pc.main([*map(str, files), "--out-dir", str(out / "x"), "--nodes", "3"]) == 0
    assert not (out / "x" / "curve_size.png").exists()
    assert "curve_size.png: no matrix run at N=3" in capsys.readouterr().out
