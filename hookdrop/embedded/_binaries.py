"""A copy of PostgreSQL's binaries for a server user who cannot reach the installed ones.

Under root the embedded PostgreSQL runs as an unprivileged user. A virtualenv inside a folder
only root may enter (a clone in root's home, ``mktemp -d``) hides pgserver's programs from that
user; it then runs a copy of ``bin``, ``lib``, ``share`` and the bundled libraries, hard links
where the file system allows, laid out as in site-packages so the programs' relative paths hold.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import psutil
import structlog

from hookdrop.embedded._process import RunAs
from hookdrop.errors import ConfigError

log = structlog.get_logger(__name__)

_INSTALL_PARTS = ("bin", "lib", "share")


def can_traverse(path: Path, user: RunAs) -> bool:
    """True when ``user`` may enter ``path`` and every folder above it (ACLs not considered)."""
    groups = set(os.getgrouplist(user.name, user.gid)) if user.name != str(user.uid) else set()
    groups.add(user.gid)
    for folder in (path, *path.parents):
        try:
            info = folder.stat()
        except OSError:
            return False
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def binaries_for(install: Path, beside: Path, run_as: RunAs | None) -> Path:
    """A ``bin`` folder of ``install`` whose programs ``run_as`` can run.

    pgserver's own when ``run_as`` reaches it (or is ``None``: this process runs the server),
    otherwise a copy kept in ``beside``, made once per installation.
    """
    if run_as is None or can_traverse(install / "bin", run_as):
        return install / "bin"
    copy = copy_path(install, beside)
    bindir = copy / _relative_install(install) / "bin"
    if not (bindir / "postgres").exists():
        _copy_install(install, copy)
        log.info(
            "embedded.postgres.binaries_copied",
            source=str(install),
            dir=str(copy),
            run_as=run_as.name,
        )
    if not can_traverse(bindir, run_as):
        raise ConfigError(
            f"user {run_as.name} cannot reach the PostgreSQL binaries in {install} nor their "
            f"copy in {copy}; choose another HOOKDROP_STATE_DIR or set DATABASE_URL"
        )
    return bindir


def copy_path(install: Path, beside: Path) -> Path:
    """Where the copy of ``install`` is kept in ``beside``: one per installation."""
    info = (install / "bin" / "postgres").stat()
    key = f"{install}:{info.st_size}:{info.st_mtime_ns}"
    return beside / f"pgbin-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def remove_copy(install: Path, beside: Path) -> Path | None:
    """Delete the copy of ``install`` unless a program of it runs; the folder deleted."""
    copy = copy_path(install, beside)
    if not copy.exists():
        return None
    for process in psutil.process_iter(["exe"]):
        exe = process.info["exe"]
        if exe and Path(exe).is_relative_to(copy):
            return None  # another state folder's server runs from it
    shutil.rmtree(copy)
    return copy


def _relative_install(install: Path) -> Path:
    """``pgserver/pginstall``: the installation's place in site-packages."""
    return Path(install.parent.name, install.name)


def _copy_install(install: Path, target: Path) -> None:
    """Copy (hard-link where possible) pgserver's installation to ``target``, atomically.

    The programs find ``lib/`` and ``share/`` relative to their own path, and their shared
    libraries in ``pgserver.libs`` beside the package (an rpath relative to the program), so
    the copy keeps the layout of site-packages. Hard links, unlike symbolic ones, resolve to
    the copy's own path.
    """
    site = install.parent.parent
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        parts = [_relative_install(install) / part for part in _INSTALL_PARTS]
        parts += [Path(p.name) for p in site.glob(f"{install.parent.name}.libs")]
        for part in parts:
            shutil.copytree(site / part, staging / part, symlinks=True, copy_function=_link_or_copy)
        for folder, _dirs, _files in os.walk(staging):
            os.chmod(folder, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _relative_install(install) / "bin" / "postgres").exists():
                raise
            # Another process made the same copy meanwhile: use theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    mode = os.stat(source).st_mode
    readable = mode & stat.S_IROTH and (not mode & stat.S_IXUSR or mode & stat.S_IXOTH)
    if readable:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copy2(source, target)
    extra = (
        stat.S_IROTH | stat.S_IRGRP | (stat.S_IXOTH | stat.S_IXGRP if mode & stat.S_IXUSR else 0)
    )
    os.chmod(target, stat.S_IMODE(mode) | extra)
