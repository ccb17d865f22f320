"""What a warm sandbox's `fill` does in the isolating backends: put a prepared artifact where its host will
load it, unless the host's pre-imports would shadow the artifact's bundled packages.

A warm sandbox is started before its submission is known (sandbox_image/host.py --warm), with two empty
per-launch folders bound read-only at /submission and /install. A bind mount shows its folder's content
as it is now, so files added later appear inside: the staged submission and its installed packages are
hard-linked in (the same files, root's and read-only to the sandbox, so nothing the sandbox does reaches
the artifact's cache), copied where links cannot be made. Then the harness sends the load line.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from sandbox_image.host import PREWARMED_PACKAGES
from workers.sandbox import install
from workers.sandbox.install import Prepared


def link_tree(source: Path, target: Path) -> None:
    """`source`'s folders and regular files recreated under the existing `target` (same modes), files as
    hard links where the filesystem allows. A staged artifact holds regular files only."""
    for folder, dirs, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        for name in dirs:
            made = target / relative / name
            made.mkdir()
            os.chmod(made, os.stat(Path(folder) / name).st_mode & 0o7777)
        for name in files:
            _link_or_copy(Path(folder) / name, target / relative / name)
    os.chmod(target, os.stat(source).st_mode & 0o7777)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target)


def shadowed(install_site: Path) -> set[str]:
    """The top-level packages of an artifact's installed bundle (its site-packages folder) that a warm
    host has imported from the image already: such an artifact needs a cold sandbox."""
    if not install_site.is_dir():
        return set()
    names = set()
    for entry in install_site.iterdir():
        if entry.name.endswith((".dist-info", ".egg-info", ".data")) or entry.name == "__pycache__":
            continue
        names.add(entry.name.split(".", 1)[0] if entry.is_file() else entry.name)
    return names & PREWARMED_PACKAGES


def fill_prepared(prepared: Prepared, python_version: str, submission: Path, installed: Path) -> bool:
    """Link `prepared` (a staged artifact and its install) into a warm sandbox's empty `submission` and
    `installed` folders; False, with nothing linked, when the host's pre-imports would shadow part of
    its bundle."""
    if prepared.install is not None:
        site = prepared.install / Path(install.install_site(python_version)).relative_to(
            install.INSTALL_MOUNT
        )
        if shadowed(site):
            return False
    link_tree(prepared.submission, submission)
    if prepared.install is not None:
        link_tree(prepared.install, installed)
    install.touch(prepared)
    return True
