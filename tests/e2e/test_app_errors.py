"""App directories that misbehave, given to the real `flpg run`: one `flpg: error:`
line naming the problem, exit code 2, and no row written. The app code in these
cases runs only in the component check's child process, under a time limit.
(Unreadable files need a user other than root: tests/unit/test_appbundle.py.)"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_cli_errors import TABLES, assert_one_line_error, counts

pytestmark = pytest.mark.e2e

CHECK_TIMEOUT = 2
"""FLPG_APP_CHECK_TIMEOUT for these tests (the hanging apps wait this long)."""
SECRET = "top-secret-token-7f3a"


def app_copy(parent: Path, name: str = "app") -> Path:
    """A copy of apps/deterministic, which submits fine as it is."""
    target = parent / name
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def set_serverapp(app: Path, module_source: str) -> None:
    """Make the ServerApp component `det_app.evil:app`, whose module is `module_source`
    (it ends by re-exporting the real ServerApp, so only its side effects matter)."""
    (app / "det_app" / "evil.py").write_text(
        module_source + "\nfrom det_app.server_app import app  # noqa\n"
    )
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text().replace("det_app.server_app:app", "det_app.evil:app")
    pyproject.write_text(text)


def set_pyproject(app: Path, data: bytes | str) -> None:
    path = app / "pyproject.toml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def components_with(extra: str) -> str:
    return (
        f"{extra}\n[tool.flpg.app.components]\n"
        'serverapp = "det_app.server_app:app"\nclientapp = "det_app.client_app:app"\n'
    )


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """Builds a bad app under a directory and returns the APP_DIR argument."""

    make: Callable[[Path], Path]
    needles: tuple[str, ...]


def _fifo(rel: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        app = app_copy(tmp)
        os.mkfifo(app / rel)  # opening it for reading would block for ever
        return app

    return make


def _socket(tmp: Path) -> Path:
    app = app_copy(tmp)
    # AF_UNIX paths are short: bind from inside the directory.
    cwd = os.getcwd()
    os.chdir(app / "det_app")
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("listener.sock")
        sock.close()  # the socket file stays
    finally:
        os.chdir(cwd)
    return app


def _device(tmp: Path) -> Path:
    app = app_copy(tmp)
    try:
        os.mknod(app / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device file needs CAP_MKNOD")
    return app


def _pyproject_dir(tmp: Path) -> Path:
    app = app_copy(tmp)
    (app / "pyproject.toml").unlink()
    (app / "pyproject.toml").mkdir()
    return app


def _pyproject_fifo(tmp: Path) -> Path:
    app = app_copy(tmp)
    (app / "pyproject.toml").unlink()
    os.mkfifo(app / "pyproject.toml")
    return app


def _pyproject_bytes(data: bytes | str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        app = app_copy(tmp)
        set_pyproject(app, data)
        return app

    return make


def _pyproject_symlink_out(tmp: Path) -> Path:
    app = app_copy(tmp)
    outside = tmp / "elsewhere.toml"
    outside.write_text((app / "pyproject.toml").read_text())
    (app / "pyproject.toml").unlink()
    (app / "pyproject.toml").symlink_to(outside)
    return app


def _plain_file(tmp: Path) -> Path:
    path = tmp / "pyproject.toml"
    path.write_text((APPS / "deterministic" / "pyproject.toml").read_text())
    return path


def _through_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "app"


def _control_chars_in_path(tmp: Path) -> Path:
    return tmp / "no\nsuch\x1bapp"


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _symlink(target: Callable[[Path], Path], name: str = "data.txt") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        app = app_copy(tmp)
        (app / "det_app" / name).symlink_to(target(tmp))
        return app

    return make


def _secret_file(tmp: Path) -> Path:
    secret = tmp / "secret.txt"
    secret.write_text(SECRET)
    return secret


def _outside_dir(tmp: Path) -> Path:
    (tmp / "outside").mkdir()
    (tmp / "outside" / "x.py").write_text(f"TOKEN = {SECRET!r}\n")
    return tmp / "outside"


def _git_config(app: Path) -> Path:
    """A file inside the app directory but in a directory bundles leave out."""
    (app / ".git").mkdir()
    (app / ".git" / "config").write_text(f"url = https://user:{SECRET}@example.com/x\n")
    return app / ".git" / "config"


def _inside_dir_link(tmp: Path) -> Path:
    return tmp / "app" / "det_app"  # a link to a directory inside: refused too


def _loop(tmp: Path) -> Path:
    return tmp / "app" / "det_app" / "loop"  # the link points at itself


def _too_many_files(tmp: Path) -> Path:
    app = app_copy(tmp)
    data = app / "many"
    data.mkdir()
    for i in range(10_001):
        (data / f"{i}.txt").touch()
    return app


def _too_big(tmp: Path) -> Path:
    app = app_copy(tmp)
    with open(app / "weights.bin", "wb") as f:
        f.truncate(300 << 20)  # sparse: no disk used, but 300 MiB to bundle
    return app


def _bad_name(name: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        app = app_copy(tmp)
        with open(os.path.join(os.fsencode(app / "det_app"), name), "wb") as f:
            f.write(b"x")
        return app

    return make


def _serverapp_source(source: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        app = app_copy(tmp)
        set_serverapp(app, source)
        return app

    return make


CASES: dict[str, Case] = {
    # Files that are not regular files: refused by name, never opened (no hang).
    "fifo-in-app-dir": Case(_fifo("queue"), ("queue", "is a FIFO")),
    "fifo-in-package": Case(_fifo("det_app/pipe.py"), ("det_app/pipe.py", "is a FIFO")),
    "socket": Case(_socket, ("det_app/listener.sock", "is a socket")),
    "device-file": Case(_device, ("null", "is a character device")),
    "pyproject-is-fifo": Case(_pyproject_fifo, ("pyproject.toml", "is a FIFO")),
    "pyproject-is-dir": Case(_pyproject_dir, ("pyproject.toml", "is a directory")),
    # pyproject.toml contents.
    "pyproject-latin-1": Case(
        _pyproject_bytes(components_with('[project]\nname = "caf\xe9"').encode("latin-1")),
        ("pyproject.toml", "not UTF-8", "0xe9"),
    ),
    "pyproject-utf-16": Case(
        _pyproject_bytes(components_with("").encode("utf-16")), ("pyproject.toml", "not UTF-8")
    ),
    "pyproject-not-toml": Case(_pyproject_bytes("[tool.flpg\nx = "), ("not valid TOML",)),
    "pyproject-no-components": Case(
        _pyproject_bytes('[project]\nname = "x"\n'), ("[tool.flpg.app.components]",)
    ),
    "pyproject-tool-not-a-table": Case(
        _pyproject_bytes("tool = 5\n"), ("[tool.flpg.app.components]",)
    ),
    "pyproject-components-not-a-table": Case(
        _pyproject_bytes("[tool.flpg.app]\ncomponents = 3\n"), ("[tool.flpg.app.components]",)
    ),
    "component-not-a-string": Case(
        _pyproject_bytes("[tool.flpg.app.components]\nserverapp = 5\nclientapp = 6\n"),
        ("serverapp must be 'module:attribute'",),
    ),
    "component-path-traversal": Case(
        _pyproject_bytes(
            '[tool.flpg.app.components]\nserverapp = "../../etc:passwd"\n'
            'clientapp = "det_app.client_app:app"\n'
        ),
        ("serverapp must be 'module:attribute'",),
    ),
    "project-name-with-nul": Case(
        _pyproject_bytes(components_with('[project]\nname = "a\\u0000b"')), ("[project] name",)
    ),
    "project-name-too-long": Case(
        _pyproject_bytes(components_with(f'[project]\nname = "{"n" * 500}"')), ("[project] name",)
    ),
    "config-not-a-table": Case(
        _pyproject_bytes(
            components_with("").replace(
                "[tool.flpg.app.components]",
                "[tool.flpg.app]\nconfig = 1\n[tool.flpg.app.components]",
            )
        ),
        ("[tool.flpg.app.config] must be a table",),
    ),
    # The path itself.
    "path-is-a-file": Case(_plain_file, ("is a file, not a directory",)),
    "path-does-not-exist": Case(lambda tmp: tmp / "missing", ("does not exist",)),
    "path-through-a-file": Case(_through_file, ("does not exist",)),
    "path-with-control-characters": Case(_control_chars_in_path, ("does not exist", "\\n")),
    "empty-directory": Case(_empty_dir, ("has no pyproject.toml",)),
    # Symlinks: nothing from outside the app directory is bundled.
    "symlink-to-secret-outside": Case(
        _symlink(_secret_file), ("det_app/data.txt", "outside the app directory")
    ),
    "symlink-to-absolute-system-file": Case(
        _symlink(lambda tmp: Path("/etc/hostname")), ("outside the app directory",)
    ),
    "pyproject-symlinked-outside": Case(
        _pyproject_symlink_out, ("pyproject.toml", "outside the app directory")
    ),
    "symlink-to-dir-outside": Case(
        _symlink(_outside_dir, "shared"), ("det_app/shared", "symlink to a directory")
    ),
    "symlink-to-dir-inside": Case(
        _symlink(_inside_dir_link, "again"), ("det_app/again", "symlink to a directory")
    ),
    "dangling-symlink": Case(
        _symlink(lambda tmp: tmp / "app" / "gone.txt"), ("det_app/data.txt", "symlink to nothing")
    ),
    "symlink-into-git": Case(
        _symlink(lambda tmp: _git_config(tmp / "app"), "remote.txt"),
        ("det_app/remote.txt", "not bundled"),
    ),
    "symlink-loop": Case(_symlink(_loop, "loop"), ("det_app/loop", "cannot read")),
    # Names and sizes.
    "file-name-not-utf-8": Case(_bad_name(b"caf\xe9.py"), ("not valid UTF-8",)),
    "file-name-with-newline": Case(_bad_name(b"two\nlines.py"), ("control character",)),
    "too-many-files": Case(_too_many_files, ("more than 10000 files",)),
    "files-too-big": Case(_too_big, ("more than 256 MiB",)),
    # App code at import: it runs in the check's child process only.
    "import-hangs": Case(
        _serverapp_source("import time\ntime.sleep(3600)"),
        ("e2e-deterministic", f"timed out after {CHECK_TIMEOUT} s"),
    ),
    "import-waits-for-stdin": Case(_serverapp_source("input()"), ("det_app.evil:app", "EOFError")),
    "import-calls-sys-exit": Case(
        _serverapp_source("import sys\nsys.exit(3)"), ("det_app.evil:app", "exited with code 3")
    ),
    "import-calls-os-exit": Case(
        _serverapp_source("import os\nos._exit(7)"), ("e2e-deterministic", "exited with code 7")
    ),
    "import-exits-zero": Case(
        _serverapp_source("import os\nos._exit(0)"), ("e2e-deterministic", "exited with code 0")
    ),
    "import-sigkills-itself": Case(
        _serverapp_source("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
        ("e2e-deterministic", "killed by SIGKILL"),
    ),
    "import-segfaults": Case(
        _serverapp_source("import ctypes\nctypes.string_at(0)"),
        ("e2e-deterministic", "killed by SIGSEGV"),
    ),
    "import-realtime-signal": Case(
        _serverapp_source("import os, signal\nos.kill(os.getpid(), signal.SIGRTMIN + 1)"),
        ("e2e-deterministic", "killed by SIGRTMIN+1"),
    ),
    "import-raises-multiline-with-nul": Case(
        _serverapp_source("raise ValueError('line one\\nline two\\x00 end')"),
        ("det_app.evil:app", "ValueError: line one\\nline two\\x00 end"),
    ),
    "import-floods-output-then-raises": Case(
        _serverapp_source(
            "import sys, os\nprint('x' * 100000)\nsys.stderr.write('y\\n' * 10000)\n"
            "os.write(1, b'z' * 70000)\nraise RuntimeError('after the flood')"
        ),
        ("det_app.evil:app", "RuntimeError: after the flood"),
    ),
    "import-reads-database-url": Case(
        _serverapp_source(
            "import os\nraise KeyError(repr(os.environ.get('FLPG_DATABASE_URL', 'no-url')))"
        ),
        ("det_app.evil:app", "no-url"),
    ),
}


@pytest.fixture
def registered(federation: Federation) -> Iterator[Federation]:
    """A database with one registered node, so a valid submission would be stored."""
    federation.sql("INSERT INTO nodes (name, node_config) VALUES ('n0', '{}')")
    federation.env["FLPG_APP_CHECK_TIMEOUT"] = str(CHECK_TIMEOUT)
    yield federation


@pytest.mark.parametrize("name", sorted(CASES))
def test_misbehaving_app_directory_gets_one_line_and_exit_2(
    registered: Federation, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    app = case.make(tmp_path)
    started = time.monotonic()
    result = registered.cli("run", str(app), check=False, timeout=60)
    line = assert_one_line_error(result, *case.needles)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert SECRET not in line
    assert counts(registered) == dict.fromkeys(TABLES, 0)
    if "fifo" in name:
        assert time.monotonic() - started < 30  # refused, not read (a read would block)


def test_leftover_children_of_a_hanging_import_are_killed(
    registered: Federation, tmp_path: Path
) -> None:
    """App code that starts a process and then hangs: after the time limit the check
    kills the child's whole process group, so nothing the app started lives on."""
    app = app_copy(tmp_path)
    pid_file = tmp_path / "grandchild.pid"
    set_serverapp(
        app,
        "import subprocess, time\n"
        f"p = subprocess.Popen(['sleep', '3600'])\nopen({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(3600)",
    )
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, f"timed out after {CHECK_TIMEOUT} s")
    assert result.returncode == 2
    grandchild = int(pid_file.read_text())
    assert not _running(grandchild)
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_symlink_to_a_file_inside_is_bundled_as_a_copy(
    registered: Federation, tmp_path: Path
) -> None:
    """The documented rule's other side: a symlink to a regular file inside the app
    directory is bundled as that file's content, and the run is stored."""
    app = app_copy(tmp_path)
    (app / "det_app" / "alias.py").symlink_to(app / "det_app" / "server_app.py")
    result = registered.cli("run", str(app), "--format", "json")
    assert result.json()["app"] == "e2e-deterministic"
    bundle = bytes(registered.scalar("SELECT bundle FROM apps"))
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        assert zf.read("det_app/alias.py") == (app / "det_app" / "server_app.py").read_bytes()
        assert not any(stat.S_ISLNK(i.external_attr >> 16) for i in zf.infolist())
