"""A process that moves payloads keeps its freed chunk buffers (lifecycle.
keep_freed_memory): reading and writing 1 MiB chunks then stops faulting zeroed pages
in for every chunk. Measured with the kernel's page-fault count of a real process
streaming real payloads through a real database."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from flpg import lifecycle

from .conftest import Federation

MOVE = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from flpg import lifecycle
    from flpg.app import arrays
    from flpg.store import payloads
    from flpg.store.db import connect
    url, run_id, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "keep":
        assert lifecycle.keep_freed_memory()
    model = np.arange(8 << 20, dtype=np.float32)  # 32 MiB: 32 chunks
    with connect(url) as conn:
        (array_id,) = payloads.write(conn, run_id, [arrays.encode(model, "w")], durable=False)
        ref = payloads.ArrayRef(None, "r", 0, "w", array_id, "<f4",
                  model.shape, model.nbytes, 32, arrays.digest(memoryview(model).cast("B")))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            got = payloads.read(conn, [ref])[array_id]
            del got
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(fed: Federation, mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", MOVE, fed.url, str(fed.run_id), mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_streamed_reads_reuse_freed_chunk_buffers(fed: Federation) -> None:
    default, kept = _faults(fed, "default"), _faults(fed, "keep")
    # 4 reads of 32 chunks: by default each chunk's buffers are faulted in anew.
    assert default > 4 * 32 * 256
    assert kept < default / 4, (default, kept)


def test_it_is_a_no_op_where_malloc_is_not_glibcs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle.sys, "platform", "darwin")
    assert lifecycle.keep_freed_memory() is False
