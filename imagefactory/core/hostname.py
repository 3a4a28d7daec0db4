"""One host-name validator for every place a guest gets a name (build recipes, seed).

A host name ends up in /etc/hostname, /etc/hosts, util-vserver's uts/nodename,
systemd-nspawn's Hostname= and LXC's lxc.uts.name: a newline or an oversized
value would corrupt those files, so only RFC 1123 names pass.
"""

from __future__ import annotations

import re

from imagefactory.core.errors import ImageFactoryError, shown

MAX_LENGTH = 253  # RFC 1123 (the kernel's nodename limit is 64; uts gets the first label anyway)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_hostname(hostname: str, error: type[ImageFactoryError] = ImageFactoryError, where: str = "") -> str:
    """The host name without a trailing dot; raises `error` (prefixed by `where`) if invalid."""
    labels = hostname.removesuffix(".").split(".")
    if len(hostname) > MAX_LENGTH or not all(_LABEL.fullmatch(label) for label in labels):
        raise error(f"{where}hostname {shown(hostname)} is not a valid host name "
                    f"(dot-separated labels of 1-63 of A-Z a-z 0-9 -, at most {MAX_LENGTH} characters)")
    return hostname.removesuffix(".")
