"""data.download=true wired through the datamodule, against an archive served on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.utils import instantiate

from anomaly_ae.data.download import MARKER, DownloadError
from anomaly_ae.data.mvtec import MVTecDataModule
from tests.helpers import compose_config, make_mvtec_tree

ARCHIVE = "mvtec_anomaly_detection.tar.xz"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(url, sha256, request log) of a tar.xz with toy/ at its top, as the real one has bottle/."""
    tree = make_mvtec_tree(tmp_path / "tree", n_train=8, n_good=2, n_defect=2)
    public = tmp_path / "public"
    public.mkdir()
    with tarfile.open(public / ARCHIVE, "w:xz") as tar:
        tar.add(tree / "toy", arcname="toy")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(public))
    )
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    digest = hashlib.sha256((public / ARCHIVE).read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_port}/{ARCHIVE}", digest, requests
    server.shutdown()
    server.server_close()


def toy(root: Path, **kwargs) -> MVTecDataModule:
    options = dict(image_size=16, batch_size=2, num_workers=0, val_fraction=0.25, progress=False)
    return MVTecDataModule(str(root), "toy", **(options | kwargs))


def test_prepare_data_downloads_once_then_works_offline(served, tmp_path: Path) -> None:
    url, digest, requests = served
    root = tmp_path / "data" / "mvtec_anomaly_detection"
    dm = toy(root, download=True, url=url, sha256=digest)
    dm.prepare_data()
    assert requests == [f"/{ARCHIVE}"]
    assert (root / MARKER).read_text() == digest + "\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        ".mvtec_anomaly_detection.lock",
        root.name,
    ]
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (6, 4)
    again = toy(root, download=True, url="http://127.0.0.1:9/gone.tar.xz", sha256=digest)  # nothing listens
    again.prepare_data()
    again.setup()
    assert len(requests) == 1


def test_setup_alone_downloads_into_an_empty_root_from_the_config(served, tmp_path: Path) -> None:
    url, digest, requests = served
    root = tmp_path / "mvtec"
    root.mkdir()  # made in advance by the user: empty, so nothing to protect
    overrides = [f"data.root={root}", "category=toy", "data.download=true", f"data.url={url}"]
    cfg = compose_config([*overrides, f"data.sha256={digest}", "data.image_size=16", "data.num_workers=0"])
    dm = instantiate(cfg.data, batch_size=2, val_fraction=0.25, progress=False)
    dm.setup("fit")  # run.py calls setup without prepare_data
    assert len(requests) == 1 and dm.train_set.images.shape == (6, 1, 16, 16)


def test_wrong_checksum_leaves_no_dataset(served, tmp_path: Path) -> None:
    url, digest, _ = served
    root = tmp_path / "data" / "mvtec"
    with pytest.raises(DownloadError, match=f"expected sha256 {'0' * 64}, got {digest}"):
        toy(root, download=True, url=url, sha256="0" * 64).setup()
    assert not root.exists()


def test_download_of_a_missing_category_says_which_exist(served, tmp_path: Path) -> None:
    url, digest, _ = served
    root = tmp_path / "mvtec"
    with pytest.raises(FileNotFoundError) as error:
        MVTecDataModule(str(root), "grid", download=True, url=url, sha256=digest, progress=False).setup()
    assert str(error.value) == (
        f"{root / 'grid'} is not in the MVTec AD archive from {url}, which holds toy: check the category."
    )
