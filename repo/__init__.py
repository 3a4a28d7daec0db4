"""Signed repositories of built artifacts: APT, RPM-MD and simplestreams images.

A repository directory holds complete, immutable *states*; `current` is a
symlink switched with one rename, so clients never see a half-published tree.
"""
