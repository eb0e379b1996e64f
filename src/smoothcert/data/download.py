"""Downloads with checksums, for the public datasets that may be fetched (``download=True``).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..errors import SmoothcertError

# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


class DownloadError(SmoothcertError, RuntimeError):
    """No mirror delivered a file with the expected checksum."""


def _fetch(url: str, destination: Path, *, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` (overwritten). The only code here that uses the network."""
    # Some mirrors refuse urllib's default user agent.
    request = urllib.request.Request(url, headers={"User-Agent": "smoothcert (python urllib)"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_verified(filename: str, mirrors: Sequence[str], md5: str, directory: Path) -> Path:
    """Fetch ``filename`` from the first mirror that delivers it with the right md5.

    An existing file with the right md5 is kept. A partial or wrong download never appears under
    the final name: it is written to ``<name>.part`` and renamed only after the checksum passes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    if target.is_file() and _md5(target) == md5:
        return target
    partial = directory / (filename + ".part")
    failures = []
    for mirror in mirrors:
        url = mirror + filename
        print(f"smoothcert: downloading {url}", file=sys.stderr)
        try:
            _fetch(url, partial)
        except (OSError, urllib.error.URLError, ValueError) as err:
            failures.append(f"{url}: {err}")
            partial.unlink(missing_ok=True)
            continue
        got = _md5(partial)
        if got != md5:
            failures.append(f"{url}: md5 {got} does not match the expected {md5}")
            partial.unlink(missing_ok=True)
            continue
        partial.replace(target)
        return target
    raise DownloadError(
        f"could not download {filename}:\n  "
        + "\n  ".join(failures)
        + f"\nFetch it by hand (md5 {md5}) into {directory}."
    )


