"""How many of hardlink's extra links are package config files (which unify never links).

Usage: unify_conffile_dupes.py GUEST_ROOT...  -> prints the number of duplicate conffiles
(same content, mode, owner, mtime, xattrs; >= 16 bytes), i.e. what hardlink(1) links among
them and unify deliberately does not.
"""

import os
import sys

from unify.ownership import config_files
from unify.store import hash_fd, meta_of, read_xattrs
from unify.walk import open_root

total, keys = 0, set()
for root in sys.argv[1:]:
    root_fd = open_root(root)
    for path in config_files(root_fd):
        full = os.path.join(root, path.lstrip("/"))
        if os.path.islink(full) or not os.path.isfile(full) or os.path.getsize(full) < 16:
            continue
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        keys.add((hash_fd(fd)[0], meta_of(st, read_xattrs(fd), False).key()))
        os.close(fd)
        total += 1
    os.close(root_fd)
print(total - len(keys))
