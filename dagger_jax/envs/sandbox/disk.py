"""A disk quota for a bubblewrap sandbox: its writable files on a filesystem of their own.

Everything a bubblewrap sandbox can write (the repo copy at /testbed, /tmp, /var/tmp) lives on
a sparse ext4 image of the quota's size, loop-mounted on the host: a command that fills it
gets "No space left on device" in its own output, and the host's disk gives up at most the
quota. An image file rather than a tmpfs, because its pages are disk, not RAM, and a repo of a
few hundred MB times the concurrency would otherwise be held in memory. Making one costs a few
tens of milliseconds (no journal: the files die with the episode).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dagger_jax.envs.sandbox.base import SandboxError


class DiskImage:
    """A sparse ext4 image of `size_mb` at `image`, mounted at `mount` until release()."""

    def __init__(self, image: Path, mount: Path, size_mb: int):
        self.image, self.mount = image, mount
        self._mounted = False
        steps = [
            ["truncate", "-s", f"{size_mb}M", str(image)],
            # -m 0: no blocks reserved for root (the sandbox's user gets the whole quota).
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
             "-E", "lazy_itable_init=1,nodiscard", str(image)],
            ["mount", "-o", "loop,nosuid,nodev", str(image), str(mount)],
        ]
        mount.mkdir()
        for argv in steps:
            try:
                done = subprocess.run(argv, capture_output=True, text=True)
            except FileNotFoundError as e:
                self.release()
                raise SandboxError(f"disk quota: {argv[0]} is not installed ({e}); install "
                                   "e2fsprogs, or set SandboxLimits(disk_mb=0) to run without "
                                   "a disk quota") from None
            if done.returncode != 0:
                self.release()
                raise SandboxError(f"disk quota: `{' '.join(argv)}` failed: "
                                   f"{done.stderr.strip()} (a loop device and root are needed; "
                                   "SandboxLimits(disk_mb=0) runs without a disk quota)")
        self._mounted = True

    def release(self) -> None:
        """Unmounts (lazily, should a process still hold it) and deletes the image."""
        if self._mounted or os.path.ismount(self.mount):
            unmount(self.mount)
        self._mounted = False
        try:
            self.image.unlink()
        except FileNotFoundError:
            pass


def unmount(mount: Path) -> None:
    """Detaches a mount, lazily if something still holds it; quiet if it is not mounted."""
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
