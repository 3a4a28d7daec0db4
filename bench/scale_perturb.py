"""Make a reflink copy of a guest drift the way real guests do (used by bench/scale.sh).

    scale_perturb.py drift ROOT SEED      some files changed, some added, some removed
    scale_perturb.py touch ROOT SEED PCT  PCT % of the unifiable files get new content

`drift` changes ~0.5 % of the files under usr/ (half in place, same size; half
appended to), removes ~0.3 %, and adds 20 files: 12 private to the guest and 8
that every guest with the same SEED % 4 shares (a site package installed on some
guests only). Deterministic for a given SEED.
"""

from __future__ import annotations

import os
import random
import sys


def files_under(root: str, top: str = "usr") -> list[str]:
    out = []
    for d, _, names in os.walk(os.path.join(root, top)):
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p) and os.path.isfile(p) and os.path.getsize(p) >= 16:
                out.append(p)
    out.sort()
    return out


def rewrite(path: str, rng: random.Random, keep_size: bool) -> None:
    """New content under the same name, the way a package upgrade does it (new inode, rename over):
    in place would change every guest sharing the inode in hardlink mode."""
    st = os.lstat(path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if keep_size:
        at = rng.randrange(0, max(1, len(data) - 8))
        data[at:at + 8] = rng.randbytes(8)
        del data[st.st_size:]
    else:
        data += rng.randbytes(rng.randrange(1, 4096))
    tmp = path + ".perturb"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only size/ino/ctime/content tell
    os.rename(tmp, path)


def drift(root: str, seed: int) -> None:
    rng = random.Random(seed)
    files = files_under(root)
    picked = rng.sample(files, max(1, len(files) * 8 // 1000))
    changed, removed = picked[: len(picked) * 5 // 8], picked[len(picked) * 5 // 8:]
    for i, p in enumerate(changed):
        rewrite(p, rng, keep_size=i % 2 == 0)
    for p in removed:
        os.unlink(p)
    site = os.path.join(root, "usr/local/share/site")
    os.makedirs(site, exist_ok=True)
    for i in range(12):
        with open(os.path.join(site, f"private-{i}.dat"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(100, 20000)))
    shared = random.Random(seed % 4)
    for i in range(8):
        with open(os.path.join(site, f"shared-{i}.dat"), "wb") as f:
            f.write(shared.randbytes(shared.randrange(100, 20000)))
        os.utime(os.path.join(site, f"shared-{i}.dat"), ns=(1_700_000_000 * 10**9,) * 2)


def touch(root: str, seed: int, pct: float) -> None:
    rng = random.Random(seed + 1_000_003)
    files = files_under(root)
    for p in rng.sample(files, max(1, int(len(files) * pct / 100))):
        rewrite(p, rng, keep_size=rng.random() < 0.5)


if __name__ == "__main__":
    if sys.argv[1] == "drift":
        drift(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "touch":
        touch(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(__doc__)
