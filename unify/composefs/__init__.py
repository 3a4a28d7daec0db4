"""composefs mode: guests as overlayfs mounts over a shared store of fs-verity-named objects.

One module per job: verity (the fs-verity digest), dump (the composefs-dump listing), store
(objects, lock, registry), tree (list a plain root into the store), metadir / erofs (the two
metadata layers), layers (a guest's state dir), guest (its paths and phases), mount, units
(boot configuration), convert (convert and split, crash-safe), underlay (remove the plain tree a
mount covers), maintain (status, verify, gc), support (can this host do it), cli (the unify
command's composefs part). See docs/composefs.md.
"""
