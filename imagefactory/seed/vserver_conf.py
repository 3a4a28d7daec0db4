"""The guest's Linux-VServer config, in util-vserver's /etc/vservers/NAME layout.

Pure: returns the tree as {relative path: content} plus {relative path:
symlink target}; seeding writes it into a staging dir and renames it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagefactory.seed.guest import Guest
from imagefactory.seed.limits import Rendered

# util-vserver's default guest fstab: proc, a small /tmp, devpts for ttys.
FSTAB = (
    "none\t/proc\t\tproc\tdefaults\t\t0 0\n"
    "none\t/tmp\t\ttmpfs\tsize=16m,mode=1777\t0 0\n"
    "none\t/dev/pts\tdevpts\tgid=5,mode=620\t\t0 0\n"
)
MANIFEST = "apps/imagefactory/manifest.json"  # which image (name, sha256) the guest came from
LIMITS = "apps/imagefactory/limits.json"  # the Limits every limit file here is rendered from


@dataclass
class ConfTree:
    files: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def add(self, other: dict[str, str]) -> None:
        self.files.update(other)


def render(guest: Guest, context: int, limits: Rendered, manifest_json: str) -> ConfTree:
    """The util-vserver files for one guest (context already allocated)."""
    iface = guest.interface
    tree = ConfTree(
        files={
            "context": f"{context}\n",
            "name": f"{guest.name}\n",
            "uts/nodename": f"{guest.hostname}\n",
            "interfaces/0/ip": f"{iface.ip}\n",
            "interfaces/0/prefix": f"{iface.prefix}\n",
            "interfaces/0/dev": f"{iface.dev}\n",
            "fstab": FSTAB,
            "apps/init/mark": "default\n",
            MANIFEST: manifest_json,
            LIMITS: guest.limits.to_json(),
            **limits.vserver,
        },
        links={"vdir": str(guest.root)},
    )
    if guest.limits.disk is not None:
        # VServer counted the context's own files below this directory.
        tree.files["dlimits/0/directory"] = f"{guest.root}\n"
    if guest.store is not None:
        # vhashify looks for its store through the symlinks in apps/vunify/hash/.
        tree.links["apps/vunify/hash/0"] = str(guest.store)
    return tree
