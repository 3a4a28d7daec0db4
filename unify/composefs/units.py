"""Host configuration that mounts a composefs guest at boot: systemd .mount units and fstab lines.

Both say the same thing; use one. The EROFS variant needs two mounts (the image read-only,
via a loop device as mount(8) sets up for a file, then the overlay); the overlay unit orders
itself after the image's with RequiresMountsFor=. The directory variant is one overlay mount
and needs no tool at all at boot.
"""

from __future__ import annotations

from unify.composefs.guest import GuestLayers, GuestRecord
from unify.composefs.mount import overlay_options

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def escape_path(path: str) -> str:
    """`systemd-escape --path`: the unit name of a mount point."""
    parts = [p for p in path.split("/") if p]
    text = "/".join(parts)
    if not text:
        return "-"
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif ch in _SAFE and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out += [f"\\x{b:02x}" for b in ch.encode()]
    return "".join(out)


def unit_name(where: str) -> str:
    return escape_path(where) + ".mount"


def _unit(description: str, what: str, where: str, fstype: str, options: str, requires: str) -> str:
    return (
        "# Written by imagefactory. Install: ln -s this file /etc/systemd/system/ && "
        f"systemctl enable {unit_name(where)}\n"
        "[Unit]\n"
        f"Description={description}\n"
        f"RequiresMountsFor={requires}\n"
        "\n"
        "[Mount]\n"
        f"What={what}\n"
        f"Where={where}\n"
        f"Type={fstype}\n"
        f"Options={options}\n"
        "\n"
        "[Install]\n"
        "WantedBy=local-fs.target\n"
    )


def render(layers: GuestLayers, record: GuestRecord, name: str) -> dict[str, str]:
    """{file name: content}: one .mount unit per mount, and `fstab` with the same mounts."""
    root, state = str(layers.root), str(layers.state)
    objects = f"{record.store}/objects"
    files: dict[str, str] = {}
    fstab = [f"# composefs guest {name} (imagefactory); lines in mount order\n"]
    needs = f"{state} {objects}"
    if record.meta == "erofs":
        image, mnt = str(layers.meta_image), str(layers.erofs_mnt)
        files[unit_name(mnt)] = _unit(f"composefs metadata image of guest {name}", image, mnt, "erofs",
                                      "ro,loop", state)
        fstab.append(f"{image} {mnt} erofs ro,loop 0 0\n")
        needs = f"{mnt} {objects}"
    options = overlay_options(layers, record)
    files[unit_name(root)] = _unit(f"composefs guest {name}", "overlay", root, "overlay", options, needs)
    fstab.append(f"overlay {root} overlay {options} 0 0\n")
    files["fstab"] = "".join(fstab)
    return files
