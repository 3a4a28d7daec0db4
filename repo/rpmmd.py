"""RPM-MD (repodata/) generation with createrepo_c, and its independent verification.

createrepo_c is the reference writer dnf itself is tested against, so we run it
rather than re-implement primary/filelists/other. Verification is ours: it
re-reads repomd.xml and primary.xml and checks every checksum against the files.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import zstandard

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, VerificationError

NS = {"repo": "http://linux.duke.edu/metadata/repo", "common": "http://linux.duke.edu/metadata/common"}
RPM_DIR = "rpm"


def createrepo(directory: Path, revision: int) -> None:
    """(Re)generate directory/repodata for the RPMs under directory/Packages."""
    tool = shutil.which("createrepo_c")
    if tool is None:
        raise EnvironmentProblem("createrepo_c not found (Debian package createrepo-c); needed to publish RPMs")
    proc = subprocess.run([tool, "--quiet", "--no-database", "--checksum", "sha256", "--revision", str(revision),
                           str(directory)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageFactoryError(f"createrepo_c failed: {proc.stderr.strip().splitlines()[-1:]}")


def _open_data(name: str, blob: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(blob)
    if name.endswith(".xz"):
        return lzma.decompress(blob)
    if name.endswith(".bz2"):
        return bz2.decompress(blob)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def repomd_data(repomd: bytes) -> dict[str, dict[str, str]]:
    """{type: {href, checksum, open_checksum, size}} from repomd.xml."""
    root = ET.fromstring(repomd)
    out = {}
    for data in root.findall("repo:data", NS):
        kind = data.get("type", "")
        where = f"repomd.xml entry {kind!r}"
        checksum = _child(data, "repo:checksum", where)
        entry = {"href": _attr(_child(data, "repo:location", where), "href", where),
                 "checksum": checksum.text or "", "checksum_type": checksum.get("type", "")}
        open_checksum = data.find("repo:open-checksum", NS)
        if open_checksum is not None:
            entry["open_checksum"] = open_checksum.text or ""
        size = data.findtext("repo:size", namespaces=NS)
        if size:
            entry["size"] = size
        out[kind] = entry
    return out


def _child(elem: ET.Element, path: str, where: str) -> ET.Element:
    found = elem.find(path, NS)
    if found is None:
        raise VerificationError(f"{where} has no {path.partition(':')[2]}")
    return found


def _attr(elem: ET.Element, name: str, where: str) -> str:
    value = elem.get(name)
    if value is None:
        raise VerificationError(f"{where}: {elem.tag.rpartition('}')[2]} has no {name}")
    return value


def primary_packages(primary_xml: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(primary_xml)
    packages = []
    for pkg in root.findall("common:package", NS):
        where = f"primary.xml package {pkg.findtext('common:name', '?', NS)!r}"
        checksum = _child(pkg, "common:checksum", where)
        packages.append({"name": pkg.findtext("common:name", "", NS),
                         "href": _attr(_child(pkg, "common:location", where), "href", where),
                         "checksum_type": _attr(checksum, "type", where), "checksum": checksum.text or "",
                         "size": _attr(_child(pkg, "common:size", where), "package", where)})
    return packages


def verify_tree(directory: Path) -> list[str]:
    """Problems with directory/repodata: data checksums, then each package's checksum and size."""
    problems: list[str] = []
    repomd = (directory / "repodata" / "repomd.xml").read_bytes()
    entries = repomd_data(repomd)
    primary = None
    for kind, entry in entries.items():
        path = directory / entry["href"]
        if entry["checksum_type"] != "sha256":
            problems.append(f"rpm: {kind} uses {entry['checksum_type']}, expected sha256")
            continue
        if not path.is_file():
            problems.append(f"rpm: {entry['href']} listed in repomd.xml is missing")
            continue
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry["checksum"]:
            problems.append(f"rpm: {entry['href']} does not match its repomd.xml checksum")
            continue
        try:
            opened = _open_data(entry["href"], blob)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
            problems.append(f"rpm: {entry['href']} does not decompress ({exc})")
            continue
        if "open_checksum" in entry and hashlib.sha256(opened).hexdigest() != entry["open_checksum"]:
            problems.append(f"rpm: {entry['href']} decompresses to data that does not match open-checksum")
        if kind == "primary":
            primary = opened
    if primary is None:
        return problems + ["rpm: repomd.xml lists no usable primary metadata"]
    for pkg in primary_packages(primary):
        path = directory / pkg["href"]
        if not path.is_file():
            problems.append(f"rpm: {pkg['href']} is listed but missing")
            continue
        blob = path.read_bytes()
        if hashlib.new(pkg["checksum_type"], blob).hexdigest() != pkg["checksum"] or str(len(blob)) != pkg["size"]:
            problems.append(f"rpm: {pkg['href']} does not match primary.xml (checksum/size)")
    return problems
