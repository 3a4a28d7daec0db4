"""`lxc`: the layout LXC's download template (`lxc-create -t download`) unpacks.

`<name>.lxc-meta.tar.xz` holds `config` / `config-user` (the distribution part of the
container config; the template fills in LXC_TEMPLATE_CONFIG and the container's name), `templates`
(guest files where the template replaces LXC_NAME), `excludes-user` (device nodes an
unprivileged user cannot create) and `create-message`. `<name>.lxc-rootfs.tar.xz` is the tree
(the template runs `tar -xpJf --numeric-owner`). A repository serves them as
`meta.tar.xz` / `rootfs.tar.xz` below a path named in `meta/1.0/index-system`.
"""

from __future__ import annotations

from imagefactory.build.formats import Target, record
from imagefactory.build.formats.archive import write_tar_xz

META_SUFFIX = ".lxc-meta.tar.xz"
ROOTFS_SUFFIX = ".lxc-rootfs.tar.xz"


def meta_files(target: Target) -> dict[str, bytes]:
    arch = f"lxc.arch = {target.kernel_arch}\n"
    common = "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\n"
    return {
        "config": (common + arch).encode(),
        "config-user": (common + "lxc.include = LXC_TEMPLATE_CONFIG/userns.conf\n" + arch).encode(),
        "templates": b"/etc/hostname\n/etc/hosts\n",
        "excludes-user": b"./dev/*\n",
        "create-message": (f"{target.distro} {target.suite} {target.architecture} ({target.image_variant}), "
                           f"built by imagefactory from the snapshot of {target.serial}.\n").encode(),
    }


def write(target: Target) -> list[dict]:
    meta, rootfs = target.path(META_SUFFIX), target.path(ROOTFS_SUFFIX)
    write_tar_xz(meta, target.epoch, meta_files(target))
    write_tar_xz(rootfs, target.epoch, tree=target.rootfs)
    return [record(target, "lxc", "metadata", meta), record(target, "lxc", "rootfs", rootfs)]
