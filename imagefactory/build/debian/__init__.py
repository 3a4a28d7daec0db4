"""Debian/Ubuntu backend: signed Release, Packages indices, resolver, .deb reader, dpkg install."""
