"""Containment checks for paths inside a guest root (guests and images are hostile input)."""

from __future__ import annotations

import errno
import os
import stat

from imagefactory.core.errors import UnsafeInput


def is_inside(path: str, root: str) -> bool:
    """True if the (already resolved) path is root or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


MAX_SYMLINKS = 40  # what the kernel allows in one path walk (ELOOP beyond)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_in_root(root_fd: int, path: str, create: bool = False) -> int:
    """Open the guest directory `path` below root_fd, as the guest would see it, without leaving the root.

    The walk goes one component at a time with O_NOFOLLOW, so the host kernel
    never follows a guest symlink: symlinks are read and resolved here, with
    the guest root as '/' (an absolute target restarts at the root, '..' at the
    root stays there, as in a chroot). With `create`, missing directories are
    made (0755), each inside the directory fd just checked, so nothing is ever
    created outside the root. Returns a new fd; raises UnsafeInput for a
    component that is neither a directory nor a symlink, or a symlink loop.
    """
    stack = [os.dup(root_fd)]  # fds from the root down to the current directory
    todo = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
                continue
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=stack[-1])
                stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
                continue
            except NotADirectoryError:
                pass
            except OSError as exc:  # ELOOP: the component itself is a symlink
                if exc.errno != errno.ELOOP:
                    raise
            st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                raise UnsafeInput(f"{path}: {name} is not a directory in the guest")
            hops += 1
            if hops > MAX_SYMLINKS:
                raise UnsafeInput(f"{path}: too many levels of symbolic links in the guest")
            target = os.readlink(name, dir_fd=stack[-1])
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)
