"""Saves are safe: atomic under readers and kills, tidy, and respectful of the user's files.

What is checked here, against real files and processes:

- readers loading while another process replaces the file never see a false "damaged";
- a save killed with SIGKILL at a random point leaves the old or the new index, and the
  next save removes its temporary file;
- temporary files of killed saves are removed by the next save to the same path, and
  never those of a live writer (locked, or too fresh to judge);
- an existing file keeps its permission bits, a new file follows the umask; a symlink's
  target is replaced and the link stays;
- a bad output path is reported before any writing, naming the user's path (never a
  temporary file); the file and then its folder are fsynced around the rename;
- a target the user may not write is refused unless ``force=True``; a write error (a
  file size limit) names the path; saving over a hard link makes a new file.

The long mode (``pytest -m fuzz``) kills 60 saves instead of 4.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lplr_index import IndexFileError, LPLRIndex
from lplr_index import fileformat
from lplr_index.fileformat import STALE_TEMP_AGE_S, check_output_path, read_container, write_container

pytestmark = pytest.mark.usefixtures("blas_single_thread")

REPO = Path(__file__).resolve().parents[1]
TMP_TAG = ".lplr-tmp."


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_TAG in p.name)


def long_mode(request) -> bool:
    """True when the run selected the ``fuzz`` marker (``pytest -m fuzz``)."""
    return "fuzz" in (request.config.getoption("markexpr") or "")


@pytest.fixture(scope="module")
def two_indexes(blas_single_thread, tmp_path_factory):
    """(path_a, bytes_a, path_b, bytes_b): two different saved indexes of about 1 MB each.

    Large enough that a save takes a few milliseconds (kills and replaces land inside
    the write, not only between saves), small enough to build in well under a second.
    """
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("two")
    out = []
    for name, n in (("a", 30000), ("b", 29000)):
        X = rng.standard_normal((n, 32)).astype(np.float32)
        path = folder / f"{name}.lplr"
        LPLRIndex(32, rank=8, bits_l=8, quantizer="minmax", refine_iters=0).build(X).save(path)
        out += [path, path.read_bytes()]
    assert out[1] != out[3]
    return tuple(out)


@pytest.fixture
def umask():
    """``set(mask)``: change the process umask for this test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kwargs)


# ------------------------------------------------- concurrent readers and writers
REPLACER = """
    import sys
    from lplr_index import LPLRIndex
    a, b, target, seconds = sys.argv[1:5]
    import time
    indexes = [LPLRIndex.load(a), LPLRIndex.load(b)]
    indexes[0].save(target)
    print("ready", flush=True)
    end, i = time.monotonic() + float(seconds), 0
    while time.monotonic() < end:
        indexes[i % 2].save(target)
        i += 1
    print(i, flush=True)
"""


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_readers_never_see_a_false_damage_during_replaces(two_indexes, tmp_path, mmap):
    # Regression: load opened the file by name up to three times (stat, header, arrays);
    # while a writer replaced it, about 6 % of loads mixed the old and the new file and
    # reported "damaged: checksum mismatch".
    path_a, data_a, path_b, data_b = two_indexes
    target = tmp_path / "shared.lplr"
    writer = run_python(REPLACER, str(path_a), str(path_b), str(target), "3", stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        sizes = {len(data_a): "a", len(data_b): "b"}
        seen, loads, deadline = set(), 0, time.monotonic() + 2.5
        while time.monotonic() < deadline:
            header, arrays, _ = read_container(target, mmap=mmap)
            index = LPLRIndex.load(target, mmap=mmap)
            seen.add(sizes[index.nbytes])
            loads += 1
        replaces = int(writer.communicate(timeout=30)[0].strip())
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    assert replaces > 20 and loads > 20, (replaces, loads)  # observed: ~300 replaces, ~200 loads
    assert seen == {"a", "b"}
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------ killed saves
SAVER = """
    import sys
    from lplr_index import LPLRIndex
    a, b, target = sys.argv[1:4]
    indexes = [LPLRIndex.load(a), LPLRIndex.load(b)]
    indexes[0].save(target)  # the target always holds a whole index before the kill
    print("ready", flush=True)
    i = 1
    while True:
        indexes[i % 2].save(target)
        i += 1
"""


def kill_trials(two_indexes, folder: Path, trials: int, seed: int) -> dict:
    """Kill a process saving two indexes in turn at seeded random times; check each time.

    Returns counts of what the kills left behind, for the report.
    """
    path_a, data_a, path_b, data_b = two_indexes
    target = folder / "index.lplr"
    rng = np.random.default_rng(seed)
    left = {"temp-file-left": 0, "a": 0, "b": 0}
    for trial in range(trials):
        saver = run_python(SAVER, str(path_a), str(path_b), str(target), stdout=subprocess.PIPE, text=True)
        try:
            assert saver.stdout.readline().strip() == "ready"
            time.sleep(float(rng.uniform(0.0, 0.25)))
        finally:
            saver.send_signal(signal.SIGKILL)
            saver.wait()
            saver.stdout.close()
        # the target holds the old or the new index, whole
        data = target.read_bytes()
        assert data in (data_a, data_b), f"trial {trial}: target is neither index ({len(data)} bytes)"
        left["a" if data == data_a else "b"] += 1
        assert LPLRIndex.load(target).nbytes == len(data)
        left["temp-file-left"] += len(os.listdir(folder)) > 1
    # the next save removes what the killed ones left (whatever its name)
    LPLRIndex.load(path_a).save(target)
    assert sorted(os.listdir(folder)) == ["index.lplr"]
    assert target.read_bytes() == data_a
    return left


def test_killed_saves_leave_the_old_or_new_index_and_no_temp_file(two_indexes, tmp_path):
    left = kill_trials(two_indexes, tmp_path, trials=4, seed=2026)
    print(f"4 killed saves: {left}")
    assert left["a"] + left["b"] == 4


MID_WRITE = """
    import sys, time
    from lplr_index.fileformat import read_container, write_container
    source, target = sys.argv[1:3]
    c = read_container(source)

    def progress(done, total):
        if done > total // 2:
            print("mid-write", flush=True)
            time.sleep(60)

    import lplr_index.fileformat as ff
    ff.CHUNK_BYTES = 4096
    write_container(target, c.header, c.arrays, version=c.version, progress=progress)
"""


def test_save_killed_mid_write_leaves_the_old_file_and_the_next_save_cleans_up(two_indexes, tmp_path):
    # deterministic: the kill lands while half the temporary file is written
    path_a, data_a, path_b, data_b = two_indexes
    target = tmp_path / "index.lplr"
    target.write_bytes(data_a)
    saver = run_python(MID_WRITE, str(path_b), str(target), stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "mid-write"
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        saver.stdout.close()
    (left,) = temp_files(tmp_path)
    assert left.startswith(f".index.lplr{TMP_TAG}{saver.pid}.")
    assert 0 < (tmp_path / left).stat().st_size < len(data_b)
    assert target.read_bytes() == data_a
    LPLRIndex.load(path_b).save(target)
    assert sorted(os.listdir(tmp_path)) == ["index.lplr"]
    assert target.read_bytes() == data_b


@pytest.mark.fuzz
def test_many_killed_saves(two_indexes, tmp_path, request):
    if not long_mode(request):
        pytest.skip("long mode: run with -m fuzz")
    left = kill_trials(two_indexes, tmp_path, trials=60, seed=2027)
    print(f"60 killed saves: {left}")  # observed: 35 of 60 kills left a temp file
    assert left["a"] + left["b"] == 60
    assert left["temp-file-left"] > 0  # some kills did land inside a save


# ------------------------------------------------------------ stale temp files
def make_temp(folder: Path, target: str, pid: int, *, age_s: float = 0.0) -> Path:
    path = folder / f".{target}{TMP_TAG}{pid}.deadbeef"
    path.write_bytes(b"part of a killed save")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


@pytest.fixture
def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_file_of_a_dead_writer_is_removed_by_the_next_save(saved_small, tmp_path, dead_pid):
    stale = make_temp(tmp_path, "index.lplr", dead_pid)
    saved_small.save(tmp_path / "index.lplr")
    assert not stale.exists()
    assert temp_files(tmp_path) == []


def test_old_unlocked_temp_file_is_removed_even_if_its_pid_is_alive(saved_small, tmp_path):
    # pids get reused: past the stated age an unlocked temp file is stale whoever has its pid
    stale = make_temp(tmp_path, "index.lplr", os.getpid(), age_s=STALE_TEMP_AGE_S + 60)
    saved_small.save(tmp_path / "index.lplr")
    assert not stale.exists()


def test_fresh_temp_file_of_a_live_process_is_kept(saved_small, tmp_path):
    # a live writer may not have taken its lock yet: too fresh to judge
    fresh = make_temp(tmp_path, "index.lplr", os.getpid(), age_s=STALE_TEMP_AGE_S - 60)
    saved_small.save(tmp_path / "index.lplr")
    assert fresh.exists()


def test_locked_temp_file_is_kept_however_old(saved_small, tmp_path, dead_pid):
    import fcntl

    busy = make_temp(tmp_path, "index.lplr", dead_pid, age_s=10 * STALE_TEMP_AGE_S)
    with open(busy, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a live writer (here: this test) holds it
        saved_small.save(tmp_path / "index.lplr")
        assert busy.exists()
    saved_small.save(tmp_path / "index.lplr")  # released: now it goes
    assert not busy.exists()


def test_other_files_are_never_touched(saved_small, tmp_path, dead_pid):
    keep = [
        make_temp(tmp_path, "other.lplr", dead_pid, age_s=10 * STALE_TEMP_AGE_S),  # another target
        tmp_path / ".index.lplr.tmp",  # not our pattern
        tmp_path / "index.lplr.bak",
    ]
    for p in keep[1:]:
        p.write_bytes(b"x")
    saved_small.save(tmp_path / "index.lplr")
    assert all(p.exists() for p in keep)


def test_temp_file_is_named_and_locked_while_written(saved_small, tmp_path, monkeypatch):
    import fcntl

    seen = []

    def progress(done, total):
        (name,) = temp_files(tmp_path)
        assert name.startswith(f".index.lplr{TMP_TAG}{os.getpid()}.")
        with open(tmp_path / name, "rb") as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append((done, total))

    monkeypatch.setattr(fileformat, "CHUNK_BYTES", 1024)
    data = fileformat.container_to_bytes({"a": 1}, {"x": np.arange(3000, dtype=np.float32)})
    container = read_container(data)
    write_container(tmp_path / "index.lplr", container.header, container.arrays, progress=progress)
    assert len(seen) > 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (len(data), len(data))
    assert (tmp_path / "index.lplr").read_bytes() == data
    assert temp_files(tmp_path) == []


# -------------------------------------------------------- modes and symlinks
@pytest.fixture(scope="module")
def saved_small(blas_single_thread, small_embeddings):
    return LPLRIndex(32, bits_per_coordinate=2).build(small_embeddings[:300])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664], ids=oct)
def test_existing_file_keeps_its_mode(saved_small, tmp_path, umask, mode):
    target = tmp_path / "index.lplr"
    target.write_bytes(b"old")
    target.chmod(mode)
    umask(0o077)  # the mode kept is the file's, not the umask's
    saved_small.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_new_file_follows_the_umask(saved_small, tmp_path, umask, mask):
    # Regression: every saved file was 0600 (mkstemp's mode) whatever the umask
    umask(mask)
    target = tmp_path / "index.lplr"
    saved_small.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_in_place_add_keeps_a_shared_file_readable(saved_small, small_embeddings, tmp_path, umask):
    target = tmp_path / "shared.lplr"
    saved_small.save(target)
    target.chmod(0o644)
    umask(0o077)
    LPLRIndex.load(target).add(small_embeddings[300:310]).save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-link", "relative-link"])
def test_saving_through_a_symlink_replaces_its_target(saved_small, tmp_path, relative):
    # Regression: saving to a symlink replaced the link with a regular file
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    real = real_dir / "real.lplr"
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "link.lplr"
    link.symlink_to(os.path.relpath(real, tmp_path) if relative else real)
    size = saved_small.save(link)
    assert link.is_symlink() and os.readlink(link) == (os.path.relpath(real, tmp_path) if relative else str(real))
    assert real.stat().st_size == size and real.read_bytes() == link.read_bytes()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert temp_files(tmp_path) == [] and temp_files(real_dir) == []


def test_saving_through_a_dangling_symlink_creates_its_target(saved_small, tmp_path):
    real = tmp_path / "real.lplr"
    link = tmp_path / "link.lplr"
    link.symlink_to(real)
    saved_small.save(link)
    assert link.is_symlink() and real.is_file()
    assert LPLRIndex.load(link).ntotal == saved_small.ntotal


# ------------------------------------------------- output path errors, up front
def no_write(*args, **kwargs):
    raise AssertionError("nothing may be written before the output path is checked")


@pytest.mark.parametrize(
    "case",
    ["directory", "directory-with-slash", "missing-folder", "parent-is-a-file", "fifo", "unwritable-folder"],
)
def test_bad_output_path_is_reported_before_writing_naming_the_users_path(saved_small, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    if case == "directory":
        os.mkdir("out")
        given, error, words = "out", IsADirectoryError, "output path out is a directory"
    elif case == "directory-with-slash":
        os.mkdir("out")
        given, error, words = "out/", IsADirectoryError, "output path out/ ends with '/'"
    elif case == "missing-folder":
        given, error, words = "nosuch/index.lplr", FileNotFoundError, "folder nosuch/ does not exist"
    elif case == "parent-is-a-file":
        Path("afile").write_bytes(b"x")
        given, error, words = "afile/index.lplr", NotADirectoryError, "afile/ is not a folder"
    elif case == "fifo":
        os.mkfifo("pipe.lplr")
        given, error, words = "pipe.lplr", FileExistsError, "output path pipe.lplr exists and is not a regular file"
    else:
        os.mkdir("ro")
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == "ro" else real_access(p, m))
        given, error, words = "ro/index.lplr", PermissionError, "folder ro/ is not writable"
    before = sorted(os.listdir("."))
    with pytest.raises(error) as checked:
        check_output_path(given)
    monkeypatch.setattr(os, "open", no_write)  # the save fails in the check, before any open
    with pytest.raises(error) as saved:
        saved_small.save(given)
    for info in (checked, saved):
        message = str(info.value)
        assert words in message, message
        assert TMP_TAG not in message and ".tmp" not in message, message
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before


def test_check_output_path_returns_the_file_a_save_replaces(tmp_path):
    real = tmp_path / "real.lplr"
    link = tmp_path / "link.lplr"
    link.symlink_to(real)
    assert check_output_path(link) == real
    assert check_output_path(tmp_path / "new.lplr") == tmp_path / "new.lplr"
    with pytest.raises(TypeError, match="path must be a str or path-like, got int"):
        check_output_path(3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_really_unwritable_folder(saved_small, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            saved_small.save(folder / "index.lplr")
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------- durability
def test_file_then_folder_are_fsynced_around_the_rename(saved_small, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    saved_small.save(tmp_path / "index.lplr")
    assert events == ["fsync-file", "rename", "fsync-folder"]


def test_failure_after_the_lock_removes_the_temp_file(saved_small, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    target = tmp_path / "index.lplr"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        saved_small.save(target)
    assert temp_files(tmp_path) == [] and target.read_bytes() == b"old"


def test_load_error_types_stay_index_file_errors(tmp_path):
    # the save side raises OSError subclasses; the load side always IndexFileError
    with pytest.raises(IndexFileError, match="no such file"):
        LPLRIndex.load(tmp_path / "nothing.lplr")


def test_longest_file_name_still_saves_and_cleans(saved_small, tmp_path, dead_pid):
    name = "i" * 250 + ".lplr"  # 255 characters: the longest name most file systems allow
    stale = tmp_path / f".{name[:200]}{TMP_TAG}{dead_pid}.deadbeef"
    stale.write_bytes(b"x")
    saved_small.save(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == [name]


# ------------------------------------- targets the user may not write; write errors
def read_only_for_us(monkeypatch, *paths):
    """Make ``os.access`` report ``paths`` unwritable, as for a user without write permission
    (root may write any file, so the tests also run as root)."""
    real_access = os.access
    blocked = {os.path.realpath(p) for p in paths}
    monkeypatch.setattr(os, "access", lambda p, m: False if (m & os.W_OK and os.path.realpath(p) in blocked)
                        else real_access(p, m))


@pytest.mark.parametrize("through_link", [False, True], ids=["file", "symlink"])
def test_a_read_only_target_is_refused_unless_forced(saved_small, tmp_path, monkeypatch, through_link):
    # Regression: the atomic rename replaced a read-only file in a writable folder silently,
    # where numpy.save or open(path, "wb") refuse it
    target = tmp_path / "index.lplr"
    target.write_bytes(b"old")
    target.chmod(0o444)
    given = target
    if through_link:
        given = tmp_path / "link.lplr"
        given.symlink_to(target)
    read_only_for_us(monkeypatch, target)
    with pytest.raises(PermissionError, match=rf"cannot save to {re.escape(str(given))}: .*read-only .*force=True"):
        check_output_path(given)
    with pytest.raises(PermissionError, match=rf"cannot save to {re.escape(str(given))}: .*mode 0o444"):
        saved_small.save(given)
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []
    size = saved_small.save(given, force=True)  # the user's intent: replace it
    assert target.stat().st_size == size and stat.S_IMODE(target.stat().st_mode) == 0o444
    assert LPLRIndex.load(given).ntotal == saved_small.ntotal


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_really_read_only_target(saved_small, tmp_path):
    target = tmp_path / "index.lplr"
    target.write_bytes(b"old")
    target.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):
        saved_small.save(target)
    saved_small.save(target, force=True)
    assert LPLRIndex.load(target).ntotal == saved_small.ntotal


def test_saving_over_a_hard_link_makes_a_new_file(saved_small, tmp_path):
    # documented (README, LPLRIndex.save): the rename replaces the name saved to; the
    # file's other names keep the old content
    target, other = tmp_path / "index.lplr", tmp_path / "other.lplr"
    target.write_bytes(b"old")
    os.link(target, other)
    saved_small.save(target)
    assert other.read_bytes() == b"old" and target.stat().st_nlink == 1
    assert LPLRIndex.load(target).ntotal == saved_small.ntotal


EFBIG_SAVE = """
    import resource, signal, sys
    from lplr_index import LPLRIndex
    index = LPLRIndex.load(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    try:
        index.save(sys.argv[2])
    except OSError as exc:
        print(type(exc).__name__, exc.errno, exc)
"""


def test_a_write_error_names_the_path(saved_small, tmp_path):
    # Regression: a file size limit gave "OSError: [Errno 27] File too large" without the path
    source, target = tmp_path / "small.lplr", tmp_path / "big" / "index.lplr"
    saved_small.save(source)
    target.parent.mkdir()
    target.write_bytes(b"old")
    proc = run_python(EFBIG_SAVE, str(source), str(target), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.strip() == f"OSError {errno.EFBIG} [Errno {errno.EFBIG}] cannot save to {target}: File too large"
    assert target.read_bytes() == b"old" and temp_files(target.parent) == []


def test_every_os_error_of_the_write_names_the_path_and_keeps_its_type(saved_small, tmp_path, monkeypatch):
    target = tmp_path / "index.lplr"
    for exc in (OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EPERM, "nope"),
                OSError("no errno")):
        def fail(*args, _exc=exc, **kwargs):
            raise _exc

        monkeypatch.setattr(fileformat, "_write_all", fail)
        with pytest.raises(type(exc)) as info:
            saved_small.save(target)
        assert str(target) in str(info.value) and info.value.errno == exc.errno
        assert temp_files(tmp_path) == [] and not target.exists()
