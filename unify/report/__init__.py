"""What unification saves: measure guest roots, aggregate, render as text, JSON and HTML.

Modules, each importing only those above it in this list:

* ``model``    the records: Report, GuestFigures, StoreFigures, FileItem (the --json schema);
* ``figures``  aggregation: groups of files that share storage, du's counting rules, top lists;
* ``composefs`` composefs guests, read from their listings and upper layers (not walked);
* ``measure``  unified guests: the hostile walk (unify.walk.walk_all) and FIEMAP for reflinks;
* ``whatif``   roots not unified yet, by the engine's own walk, rules and store keys;
* ``text``, ``html``  renderers; ``cli`` the ``imagefactory report`` command.

Package owners come from unify.ownership (shared with the engine's config-file reader).


Why numbers come out the way they do (the definitions `du` can check):

* A guest's *apparent* and *disk* size are what ``du -s --apparent-size -B1 GUEST`` and
  ``du -s -B1 GUEST`` say about that guest alone: every inode reached from the guest counted
  once, directories and symlinks included, disk use from ``st_blocks * 512``.
* *Without unification* is the sum of those standalone disk sizes: every guest keeps its own copy.
* *Real disk use* counts every inode once across all guests and the store, i.e.
  ``du -s -B1 STORE GUEST...`` (du counts hard links once across its arguments).
* *Saved* = without − real. It is conservative: several names inside ONE guest that were
  linked to the same store entry count once, as du counts them (we cannot tell links that
  unification made from links the package shipped); they are reported on their own as
  ``within_guest_links_bytes``.
* A guest file is *shared* when its inode is also a store entry or is reached from two or
  more guests (hardlink, immutable and vserver modes share the inode). Nothing but lstat is
  needed for that, so the unify index is not read in these modes.
* In reflink mode no inode is shared and du counts every clone in full. A guest file whose
  unify-index record is still fresh (same dev, ino, size, mtime, ctime) is shared with the
  entry the index names; guests without an index are asked with FIEMAP, whose
  ``FIEMAP_EXTENT_SHARED`` flag marks shared bytes. Files are grouped by the first shared
  physical extent, so a group's bytes are counted once.
* ``--what-if`` uses the engine's own walk and rules (exclude list, config files, minimum
  size) and its store keys (XXH3-128 of the content, metadata key, size); only files whose
  size occurs twice are read, and fresh index digests are reused.

The guest trees are hostile: the walk opens every directory relative to its parent with
O_NOFOLLOW, never follows a symlink and never leaves the guest's filesystem.
"""
