"""What app processes produce, read and named safely without a database: output
lines (bounded, binary), exit codes and signals, exception reasons, config strings,
and the environment app processes get."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from flpg.app.records import ConfigRecord, MetricRecord
from flpg.bundle.process import APP_ENV_VARIABLE, app_environment, describe_exit, signal_name
from flpg.errors import RecordError
from flpg.exec.logwriter import READ_SIZE, read_lines
from flpg.exec.runner import _reason
from flpg.store.recordjson import config_records_from_json, records_to_json
from flpg.store.text import LINE_LIMIT


def _lines_of(data: bytes, tmp_path: Path) -> list[str]:
    """`read_lines` over a file holding `data` (a file is read in full READ_SIZE
    pieces, so tests can place a line end on a piece boundary)."""
    path = tmp_path / "out"
    path.write_bytes(data)
    with open(path, "rb") as f:
        return list(read_lines(f))


def test_lines_end_at_newline_crlf_and_cr_even_across_a_read_boundary(tmp_path: Path) -> None:
    first = b"\n" * (READ_SIZE - 4) + b"abc\r"  # \r ends the first piece, \n starts the next
    data = first + b"\nb\r\nc\rd\n\ne"
    assert _lines_of(data, tmp_path) == [""] * (READ_SIZE - 4) + ["abc", "b", "c", "d", "", "e"]


def test_bytes_that_are_not_utf8_are_read_as_replacement_characters(tmp_path: Path) -> None:
    data = b"bin \xff\xfe\x00 \xc3\x28 ok \xc3\xa9\n"
    assert _lines_of(data, tmp_path) == ["bin \ufffd\ufffd\x00 \ufffd( ok \u00e9"]


def test_a_long_line_is_cut_to_line_limit_with_its_size(tmp_path: Path) -> None:
    size = LINE_LIMIT * 10
    (got, after) = _lines_of(b"\xc3\xa9" * (size // 2) + b"\nafter\n", tmp_path)
    note = f" [... line of {size} bytes cut]"
    assert got == "\u00e9" * (LINE_LIMIT - len(note)) + note
    assert after == "after"
    assert _lines_of(b"z" * LINE_LIMIT + b"\n", tmp_path) == ["z" * LINE_LIMIT]  # not cut


def _feed(fd: int, size: int) -> None:
    block = memoryview(b"x" * (1 << 20))
    sent = 0
    while sent < size:
        sent += os.write(fd, block[: min(len(block), size - sent)])
    os.write(fd, b"\nnext\n")
    os.close(fd)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # the feeder closed its end
            os.close(fd)


def test_a_50_mb_line_without_newline_is_never_held_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    size = 50 << 20
    tracemalloc.start()
    try:
        feeder = threading.Thread(target=_feed, args=(w, size))
        feeder.start()
        with os.fdopen(r, "rb", closefd=False) as reader:
            got = list(read_lines(reader))
        feeder.join()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == 2 and got[1] == "next"
    assert len(got[0]) == LINE_LIMIT and got[0].endswith(f" [... line of {size} bytes cut]")
    assert peak < 4 << 20, f"reading allocated {peak >> 20} MiB at its peak"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (3, "exited with code 3"),
        (255, "exited with code 255"),
        (-9, "was killed by SIGKILL"),
        (-11, "was killed by SIGSEGV"),
        (-(signal.SIGRTMIN + 1), "was killed by SIGRTMIN+1"),
        (-signal.SIGRTMAX, "was killed by SIGRTMAX"),
        (-32, "was killed by signal 32"),
        (-200, "was killed by signal 200"),
    ],
)
def test_every_exit_code_and_signal_number_is_named(code: int, text: str) -> None:
    assert describe_exit(code) == text


def test_every_signal_number_up_to_64_has_a_name() -> None:
    assert all(signal_name(n) for n in range(1, 65))


def test_a_reason_keeps_the_whole_message_of_any_exception() -> None:
    assert _reason(RuntimeError("a\x00b\r\nc")) == "RuntimeError: a\x00b\r\nc"
    noted = ValueError("v")
    noted.add_note("a note")
    assert _reason(noted) == "ValueError: v"
    try:
        compile("x = (", "f", "exec")
    except SyntaxError as exc:
        assert _reason(exc).startswith("SyntaxError: ")

    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert _reason(Hostile()).endswith("Hostile: <exception str() failed>")


def test_config_strings_jsonb_cannot_hold_round_trip_and_bad_keys_are_refused() -> None:
    record = ConfigRecord({"t": "a\x00b", "s": "\udc80", "l": ["x\x00", "y"], "ok": "ok"})
    doc = records_to_json({"c": record})
    assert doc["c"]["ok"] == "ok" and doc["c"]["l"][1] == "y"
    assert "\x00" not in repr(doc) and "\\udc80" not in repr(doc)
    assert config_records_from_json(doc) == {"c": record}
    for records in (
        {"c\x00": ConfigRecord({"k": 1})},
        {"c": ConfigRecord({"k\x00": 1})},
        {"m": MetricRecord({"\udc80": 1.0})},
    ):
        with pytest.raises(RecordError, match="cannot store in a key"):
            records_to_json(records)  # type: ignore[arg-type]


def test_app_processes_get_only_the_allowlisted_environment() -> None:
    worker = {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "FLPG_HEARTBEAT": "5",
        "FLPG_CACHE_DIR": "/c",
        "PGSSLMODE": "require",
        "PGPASSFILE": "/p",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "GITHUB_TOKEN": "secret",
        "PGDATA": "/var/lib/pg",
        "VIRTUAL_ENV": "/venv",
        "PYTHONPATH": "/elsewhere",
        "CUDA_VISIBLE_DEVICES": "1",
        "OMP_NUM_THREADS": "2",
        APP_ENV_VARIABLE: "CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS",
    }
    env = app_environment({"FLPG_DATABASE_URL": "postgresql:///x"}, worker)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "FLPG_HEARTBEAT": "5",
        "FLPG_CACHE_DIR": "/c",
        "PGSSLMODE": "require",
        "PGPASSFILE": "/p",
        "CUDA_VISIBLE_DEVICES": "1",
        "OMP_NUM_THREADS": "2",
        APP_ENV_VARIABLE: "CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS",
        "FLPG_DATABASE_URL": "postgresql:///x",
    }


def test_pythonpath_is_passed_only_when_flpg_is_found_through_it() -> None:
    import flpg

    root = str(Path(flpg.__file__).resolve().parent.parent)
    env = app_environment({}, {"PYTHONPATH": os.pathsep.join(["/elsewhere", root, "/more"])})
    assert env == {"PYTHONPATH": root}
