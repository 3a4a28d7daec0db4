"""Seeding: turn a verified image into a configured, limited guest on a host.

One guest, three host formats: Linux-VServer (util-vserver's /etc/vservers
layout), systemd-nspawn and LXC, all rendered from the same Limits.
"""
