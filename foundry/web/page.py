"""Publishing the catalogue page beside a local models.json.

The rule, for a folder and for a bucket alike: foundry-catalogue.js and .css are Foundry's
names and are always replaced (a newer Foundry brings a newer page); index.html is written
when there is none or when the one there is Foundry's own (it carries assets.GENERATOR_META),
and a user's own index.html is left as it is, with a warning.
"""

import logging
import os
from pathlib import Path

from foundry import temporaries
from foundry.web import assets

LOG = logging.getLogger("foundry.publish")


def skip_index(existing: bytes | None, where: str) -> bool:
    """Whether an existing index.html must be kept (it is not Foundry's)."""
    if existing is None or assets.is_foundry_page(existing):
        return False
    LOG.warning("publish: %s is not Foundry's catalogue page; leaving it as it is (the page's script and style are still written beside it)", where)
    return True


def write(folder: Path) -> list[Path]:
    """Write the page's files into `folder` (each whole, by rename); returns those written."""
    written = []
    for name, source in assets.page_files().items():
        target = folder / name
        if name == assets.INDEX and skip_index(target.read_bytes() if target.is_file() else None, str(target)):
            continue
        temporary = temporaries.beside(target)
        try:
            temporary.write_bytes(source.read_bytes())
            temporary.chmod(0o644)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        written.append(target)
    return written
