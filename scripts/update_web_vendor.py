"""Vendor the web page's front-end libraries from the npm registry into the package.

The page (src/colloquy/server/static) loads no script from a CDN: it must work offline and under
its strict Content-Security-Policy (``script-src 'self'``). So the browser builds of the
libraries it uses are copied into ``static/vendor/`` with their licences, and
``static/vendor/versions.json`` records each package's exact version, its npm integrity hash
and which files were taken.

    python scripts/update_web_vendor.py                 # re-fetch the recorded versions, verify
    python scripts/update_web_vendor.py marked@18.3.0   # move one package to another version

It runs ``npm pack NAME@VERSION`` (the registry's ordinary client) in a temporary directory,
checks the tarball's integrity against the recorded one (a changed version records its new
hash), and copies the listed files. After an update, run the browser tests and
``python bench/render.py`` (the 32,000-character render target).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src" / "colloquy" / "server" / "static" / "vendor"
VERSIONS = VENDOR / "versions.json"


def pack(name: str, version: str, workdir: Path) -> tuple[Path, str]:
    """Download ``name@version`` with npm; return the tarball and its sha512 integrity."""
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--json", "--silent"],
                         cwd=workdir, check=True, capture_output=True, text=True).stdout
    info = json.loads(out)[0]
    tarball = workdir / info["filename"]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    return tarball, f"sha512-{digest}"


def vendor(name: str, entry: dict[str, object], workdir: Path, new_version: str | None) -> None:
    version = new_version or str(entry["version"])
    tarball, integrity = pack(name, version, workdir)
    if new_version is None and integrity != entry["integrity"]:
        sys.exit(f"{name}@{version}: integrity {integrity} differs from the recorded "
                 f"{entry['integrity']}; refusing to vendor it")
    unpacked = workdir / name.replace("/", "_")
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    files = entry["files"]
    assert isinstance(files, dict)
    for source, target in files.items():
        shutil.copyfile(unpacked / "package" / source, VENDOR / target)
    entry["version"], entry["integrity"] = version, integrity
    print(f"{name}@{version} {integrity[:24]}... -> {', '.join(files.values())}")


def main(argv: list[str]) -> None:
    table = json.loads(VERSIONS.read_text())
    wanted: dict[str, str | None] = {name: None for name in table}
    for arg in argv:
        name, _, version = arg.rpartition("@")
        if name not in table or not version:
            sys.exit(f"usage: update_web_vendor.py [NAME@VERSION ...]; NAME one of {sorted(table)}")
        wanted[name] = version
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in wanted.items():
            vendor(name, table[name], Path(tmp), version)
    VERSIONS.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
