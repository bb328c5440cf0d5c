"""Where a benchmark dataset comes from, and either fetching it or saying exactly how to get it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anomaly_ae.data.download import download_dataset


@dataclass(frozen=True)
class Source:
    """A public dataset: its name, home page, licence and archive (url and sha256 where public)."""

    name: str
    page: str
    licence: str
    holds: str  # what data.root must contain, for messages: "carpet/, grid/, ..."
    url: str | None = None  # None: registration required, so by hand only
    sha256: str | None = None


def _present(root: Path) -> str:
    """Visible sub-folders of root, for 'found instead' messages."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ", ".join(names) if names else "no folders"


def missing_message(source: Source, root: Path, probe: Path, download: bool) -> str:
    """The error for a dataset that is not on disk: the root, how to get it, its checksum, the demo."""
    if source.url is None:
        why = "data.download=true cannot fetch it: " if download else ""
        how = (
            f"{why}its licence ({source.licence}) asks you to register, so download it by hand from "
            f"{source.page} and extract it so that {root} holds {source.holds}"
        )
    else:
        how = (
            f"set data.download=true to download {source.url} into {root.parent} and extract it as {root} "
            f"(checked against sha256 {source.sha256}); or download that URL by hand, check that its sha256 "
            f"is {source.sha256}, and extract it so that {root} holds {source.holds}"
        )
    return (
        f"{source.name} not found: {probe} does not exist. To get it, {how}. "
        f"Licence: {source.licence}. Without it, data=elpv runs the offline demo."
    )


def fetch(source: Source, root: Path, probe: Path, download: bool, progress: bool = True) -> None:
    """Make sure `probe` (a file or folder under root) exists: download when allowed, else raise."""
    if probe.exists():
        return
    if root.is_dir() and any(root.iterdir()):
        # The dataset is there (by hand or downloaded) but not what was asked for: a wrong root or category.
        raise FileNotFoundError(
            f"{probe} does not exist, but {root} does and holds {_present(root)}. data.root must be the "
            f"folder that holds {source.holds}; check it and the category."
        )
    if not download or source.url is None:
        raise FileNotFoundError(missing_message(source, root, probe, download))
    download_dataset(source.url, source.sha256, root.parent, root.name, progress=progress)
    if not probe.exists():
        raise FileNotFoundError(
            f"{probe} is not in the {source.name} archive from {source.url}, which holds {_present(root)}: "
            "check the category."
        )
