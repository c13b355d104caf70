"""Write files so that a crash never leaves a half-written file that looks complete.

Every output is written under a temporary name beside its target, fsynced and renamed. A write
that fails (full disk, a file-size limit, no permission) raises one VoxsegError naming the
*final* path, never the temporary, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from voxseg.errors import VoxsegError

_FIXES = {
    errno.ENOSPC: "free space on that disk or write elsewhere",
    errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EFBIG: "the file system or a file-size limit (ulimit -f) refuses files this large; "
    "write elsewhere or raise the limit",
    errno.EACCES: "make the folder writable or write elsewhere",
    errno.EPERM: "make the folder writable or write elsewhere",
    errno.EROFS: "the disk is read-only; write elsewhere",
    errno.ENOTDIR: "choose another path",
    errno.EEXIST: "choose another path",
}


def write_error(path: str | Path, cause: str, code: int | None = None) -> VoxsegError:
    """One line naming the final output with the cause and a fix. `code` (an errno) picks the
    fix; without it, it is looked up from the cause's wording (ITK and safetensors report only
    the text)."""
    if code is None:
        code = next((c for c in _FIXES if os.strerror(c).lower() in cause.lower()), None)
    fix = _FIXES.get(code, "check free space and permissions of the output folder")
    return VoxsegError(f"{path}: cannot write ({cause}); {fix}")


def os_write_error(path: str | Path, exc: OSError) -> VoxsegError:
    path = Path(path)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # a folder on the way is a file
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return write_error(path, f"{blocker} is a file, not a folder", exc.errno)
    return write_error(path, exc.strerror or str(exc), exc.errno)


def short_write(folder: Path) -> str:
    """The cause to report when a writer said it succeeded but its file came out short."""
    return f"the file written is incomplete: {likely_cause(folder) or 'is the disk full?'}"


def likely_cause(folder: Path) -> str | None:
    """What probably made a write fail that reported no cause of its own: a file-size limit
    (ulimit -f) or a nearly full disk; None if neither."""
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"{os.strerror(errno.EFBIG)}, a file-size limit of {soft} bytes is set"
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return os.strerror(errno.ENOSPC)
    return None


class AppearedMeanwhile(VoxsegError):
    """An output that did not exist when the command checked was created by another process
    before this one finished writing it (two commands writing one folder)."""


def appeared_meanwhile(path: Path) -> AppearedMeanwhile:
    return AppearedMeanwhile(
        f"{path}: another process wrote it while this one was working (two commands writing "
        "one output?); it was left as that process wrote it"
    )


def _place(tmp: Path, path: Path, exclusive: bool) -> None:
    """Rename `tmp` to `path`; `exclusive`: never over a file that exists by then (a hard
    link fails if the name is taken, so two writers cannot both think they wrote it)."""
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise appeared_meanwhile(path) from None
    except OSError:  # a file system without hard links: the check before must do
        if path.exists():
            raise appeared_meanwhile(path) from None
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "", exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place
    (`exclusive`: only if nothing took the name meanwhile).

    An OSError while writing, syncing or renaming becomes a VoxsegError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise os_write_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            _settle(tmp_path)
            _place(tmp_path, path, exclusive)
        except OSError as exc:
            raise os_write_error(path, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path` in which to write `path.name` and the files it
    refers to (a header and its data file, e.g. `.mhd` + `.zraw`) under their final names, so
    the header names the final data file. On success they are fsynced and renamed into place,
    `path.name` last: a header never points at a data file that is not there yet.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise os_write_error(path, exc) from exc
    try:
        try:
            yield folder
            written = sorted(folder.iterdir(), key=lambda p: p.name == path.name)
            for part in written:
                _settle(part)
            for part in written:
                _place(part, path.parent / part.name, exclusive)
        except OSError as exc:
            raise os_write_error(path, exc) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _settle(path: Path) -> None:
    """Usual permissions and the bytes on disk before the rename."""
    # mkstemp makes 0600 and some writers (safetensors, ITK) recreate the file: set the usual
    # mode on what was written, whoever wrote it.
    os.chmod(path, 0o666 & ~_umask())
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if tmp.stat().st_size != len(data):
            raise write_error(path, short_write(tmp.parent))


def remove_stale_parts(folder: str | Path, name: str = "*") -> int:
    """Delete temporary files (and folders) a killed process left beside `name` (all names
    by default).

    Only call this for outputs no other live process is writing.
    """
    removed = 0
    for part in Path(folder).glob(f".{name}.*.part*"):
        if part.is_dir() and not part.is_symlink():
            shutil.rmtree(part, ignore_errors=True)
        else:
            part.unlink(missing_ok=True)
        removed += 1
    return removed
