"""inference.model_store: installing nnU-Net models from folders, zips and URLs.

The models are structurally real nnU-Net v2 training output (dataset.json
and plans.json with nnU-Net's keys, ``fold_N/checkpoint_final.pth`` written
by ``torch.save``) with a tiny state dict. URLs are served by a Range-aware
HTTP server on loopback that can drop a connection midway. After every
failed installation the store must be byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from inference.download import DownloadError
from inference.model_store import (
    MANIFEST,
    ChecksumMismatchError,
    InstallRequestError,
    InvalidModelError,
    ModelExistsError,
    ModelStore,
    UnknownModelError,
)
from tests import nnunet_models
from tests.conftest import REPO

TS_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
ORGANS = ("spleen", "kidney_right", "kidney_left", "liver")
VERTEBRAE = ("sacrum", "vertebrae_S1", "vertebrae_L5")


# ---------------------------------------------------------------------------
# Fake nnU-Net models
# ---------------------------------------------------------------------------


def plans_json(dataset: str, configuration: str) -> dict:
    """A plans.json with nnU-Net v2's keys: a small plan, under `configuration`."""
    spec = nnunet_models.ModelSpec(
        dataset=dataset, spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16), features=(4, 8), labels=()
    )
    written = nnunet_models.plans(spec)
    plan = written["configurations"]["3d_fullres"] | {"data_identifier": f"nnUNetPlans_{configuration}"}
    written["configurations"] = {configuration: plan}
    return written


def make_model(
    parent: Path,
    dataset: str = "Dataset901_Organs",
    labels: Sequence[str] = ORGANS,
    *,
    trainer: str = "nnUNetTrainer",
    configuration: str = "3d_fullres",
    folds: Sequence[int] = (0,),
    checkpoints: bool = True,
) -> Path:
    """``parent/<dataset>/<trainer>__nnUNetPlans__<configuration>/``; returns the dataset folder."""
    folder = parent / dataset / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: value for value, name in enumerate(labels, 1)}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }))
    (folder / "plans.json").write_text(json.dumps(plans_json(dataset, configuration)))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        if checkpoints:
            torch.save(
                {
                    "network_weights": {"seg_layers.0.weight": torch.zeros(len(labels) + 1, 4, 1, 1, 1)},
                    "trainer_name": trainer,
                    "init_args": {"configuration": configuration, "fold": fold},
                    "current_epoch": 1,
                    "inference_allowed_mirroring_axes": None,
                },
                folder / f"fold_{fold}" / "checkpoint_final.pth",
            )
    return parent / dataset


def zip_folder(folder: Path, archive: Path, *, inside: bool = True) -> Path:
    """Zip `folder` itself (``inside``: members start with its name) or its content."""
    root = folder.parent if inside else folder
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, path.relative_to(root).as_posix())
    return archive


def snapshot(root: Path, *, skip: str | None = None) -> list[tuple[str, int, str]]:
    """Every path under `root` with its size and SHA-256, to compare before and after."""
    if not root.exists():
        return []
    entries = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if skip is not None and relative.split("/")[0] == skip:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        entries.append((relative, path.stat().st_size if path.is_file() else 0, digest))
    return entries


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """A store that already holds one model, so that failures have something to leave alone."""
    store = ModelStore(tmp_path / "store")
    store.install([str(make_model(tmp_path / "existing", "Dataset900_Existing", ("liver",)))], progress=None)
    return store


@pytest.fixture
def organs_zip(tmp_path: Path) -> Path:
    """A zip laid out like TotalSegmentator's: the DatasetNNN folder at its top."""
    dataset = make_model(tmp_path / "src", "Dataset291_TotalSegmentator_part1_organs_1559subj", ORGANS,
                         trainer=TS_TRAINER)
    return zip_folder(dataset, tmp_path / f"{dataset.name}.zip")


# ---------------------------------------------------------------------------
# A Range-capable HTTP server on loopback
# ---------------------------------------------------------------------------


class ArchiveServer:
    """Serves one payload at ``/<name>``, honouring ``Range: bytes=N-``.

    ``drop_at`` (an offset into the payload) makes the next ``drops``
    answers stop there and close the connection, as a proxy cutting a long
    transfer does. ``ranges`` records each request's Range header.
    """

    def __init__(self, payload: bytes, name: str) -> None:
        self.payload = payload
        self.name = name
        self.drop_at: int | None = None
        self.drops = 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.startswith("/redirect/"):
                    # As GitHub does, from a release URL to its storage host.
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/redirect"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/downgrade":
                    self.send_response(302)
                    self.send_header("Location", f"http://example.org/{server.name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.ranges.append(self.headers.get("Range"))
                if self.path != f"/{server.name}":
                    self.send_error(404)
                    return
                size = len(server.payload)
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                end = size
                if server.drops and server.drop_at is not None:
                    server.drops -= 1
                    end = max(start, server.drop_at)
                    self.close_connection = True
                self.wfile.write(server.payload[start:end])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{self.name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[ArchiveServer] = []

    def start(archive: Path) -> ArchiveServer:
        servers.append(ArchiveServer(archive.read_bytes(), archive.name))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------


def test_install_from_folder(tmp_path: Path) -> None:
    source = make_model(tmp_path / "src", folds=(0, 1, 2))
    before = snapshot(source)
    store = ModelStore(tmp_path / "store")
    model = store.install([str(source)], progress=None)

    assert model.name == "Dataset901_Organs"
    assert model.path == tmp_path / "store" / "Dataset901_Organs"
    (part,) = model.parts
    assert (part.source, part.sha256) == (str(source), None)
    (configuration,) = part.configurations
    assert configuration.folder == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (configuration.trainer, configuration.plans, configuration.configuration) == (
        "nnUNetTrainer", "nnUNetPlans", "3d_fullres"
    )
    assert configuration.folds == ("0", "1", "2")
    assert [(s.value, s.structure) for s in model.structures] == list(enumerate(ORGANS, 1))
    folder = part.configuration_dir(model.path, configuration)
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset.json", "fold_0", "fold_1", "fold_2", "plans.json"
    ]
    assert snapshot(source) == before  # copied, not moved
    assert store.models() == (model,)
    assert store.model("Dataset901_Organs") == model
    manifest = json.loads((model.path / MANIFEST).read_text())
    assert manifest["parts"][0]["labels"] == {str(v): name for v, name in enumerate(ORGANS, 1)}
    assert manifest["parts"][0]["configurations"][0]["folds"] == ["0", "1", "2"]
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["Dataset901_Organs"]


def test_install_from_zip_of_the_configuration_folder(tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src")
    archive = zip_folder(dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres", tmp_path / "model.zip")
    model = ModelStore(tmp_path / "store").install([str(archive)], name="organs", progress=None)
    assert model.name == "organs"
    (part,) = model.parts
    # The part is named by plans.json, whatever the zip's layout.
    assert part.dataset == "Dataset901_Organs"
    assert part.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (model.path / "Dataset901_Organs" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
            / "checkpoint_final.pth").is_file()


def test_install_from_zip_with_the_dataset_folder_at_its_top(tmp_path: Path, organs_zip: Path) -> None:
    digest = hashlib.sha256(organs_zip.read_bytes()).hexdigest()
    model = ModelStore(tmp_path / "store").install([str(organs_zip)], sha256=[digest.upper()], progress=None)
    assert model.name == "Dataset291_TotalSegmentator_part1_organs_1559subj"
    checkpoint = (model.path / model.name / f"{TS_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
                  / "checkpoint_final.pth")
    assert torch.load(checkpoint, weights_only=True)["trainer_name"] == TS_TRAINER
    assert model.parts[0].configurations[0].trainer == TS_TRAINER


def test_several_sources_make_one_multi_part_model(tmp_path: Path, organs_zip: Path) -> None:
    vertebrae = make_model(
        tmp_path / "src", "Dataset292_TotalSegmentator_part2_vertebrae_1532subj", VERTEBRAE,
        trainer=TS_TRAINER,
    )
    store = ModelStore(tmp_path / "store")
    model = store.install([str(organs_zip), str(vertebrae)], name="total", progress=None)
    assert [p.dataset for p in model.parts] == [
        "Dataset291_TotalSegmentator_part1_organs_1559subj",
        "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    ]
    # Each part keeps its own values; the model numbers them one after the other.
    assert [(s.value, s.structure) for s in model.parts[1].labels] == list(enumerate(VERTEBRAE, 1))
    assert [(s.value, s.structure) for s in model.structures] == list(enumerate(ORGANS + VERTEBRAE, 1))
    assert {p.name for p in model.path.iterdir()} == {MANIFEST, *(p.dataset for p in model.parts)}
    assert store.model("total") == model


def test_configurations_of_one_dataset_form_one_part(tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src", configuration="3d_fullres", folds=(0, 1))
    make_model(tmp_path / "src", configuration="3d_lowres", folds=(2,))
    model = ModelStore(tmp_path / "store").install([str(dataset)], progress=None)
    (part,) = model.parts
    assert [(c.configuration, c.folds) for c in part.configurations] == [
        ("3d_fullres", ("0", "1")), ("3d_lowres", ("2",))
    ]


def test_several_parts_need_a_name(store: ModelStore, tmp_path: Path, organs_zip: Path) -> None:
    before = snapshot(store.root)
    other = make_model(tmp_path / "src", "Dataset292_Vertebrae", VERTEBRAE)
    with pytest.raises(InstallRequestError, match="--name"):
        store.install([str(organs_zip), str(other)], progress=None)
    assert snapshot(store.root) == before


def test_two_parts_segmenting_one_structure_are_refused(store: ModelStore, tmp_path: Path) -> None:
    before = snapshot(store.root)
    first = make_model(tmp_path / "a", "Dataset801_A", ("liver", "spleen"))
    second = make_model(tmp_path / "b", "Dataset802_B", ("spleen",))
    with pytest.raises(InvalidModelError, match="both segment 'spleen'"):
        store.install([str(first), str(second)], name="ab", progress=None)
    assert snapshot(store.root) == before


def test_names_taken_or_invalid_are_refused(store: ModelStore, tmp_path: Path, organs_zip: Path) -> None:
    before = snapshot(store.root)
    with pytest.raises(ModelExistsError, match="Dataset900_Existing"):
        store.install([str(make_model(tmp_path / "again", "Dataset900_Existing", ("liver",)))], progress=None)
    for name in ("builtin", ".hidden", "a/b", ""):
        with pytest.raises(InstallRequestError, match="model name"):
            store.install([str(organs_zip)], name=name, progress=None)
    assert snapshot(store.root) == before


# ---------------------------------------------------------------------------
# Refusals: the store is left as it was
# ---------------------------------------------------------------------------


def test_checksum_mismatch(store: ModelStore, organs_zip: Path) -> None:
    before = snapshot(store.root)
    with pytest.raises(ChecksumMismatchError, match="expected 0000") as caught:
        store.install([str(organs_zip)], sha256=["0" * 64], progress=None)
    assert caught.value.actual == hashlib.sha256(organs_zip.read_bytes()).hexdigest()
    assert snapshot(store.root) == before


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a zip"])
def test_corrupt_zip(store: ModelStore, organs_zip: Path, damage: str) -> None:
    data = bytearray(organs_zip.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        # Inside the first member's compressed data: only its CRC-32 can tell.
        with zipfile.ZipFile(organs_zip) as bundle:
            member = next(m for m in bundle.infolist() if m.compress_size > 64)
        data[member.header_offset + 30 + len(member.filename) + member.compress_size // 2] ^= 0xFF
    else:
        data = bytearray(b"<html>404 Not Found</html>")
    organs_zip.write_bytes(bytes(data))
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="not a readable zip archive"):
        store.install([str(organs_zip)], progress=None)
    assert snapshot(store.root) == before


def test_missing_checkpoint(store: ModelStore, tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src", folds=(0, 1))
    (dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_1" / "checkpoint_final.pth").unlink()
    archive = zip_folder(dataset, tmp_path / "partial.zip")
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="fold_1/checkpoint_final.pth is missing"):
        store.install([str(archive)], progress=None)
    assert snapshot(store.root) == before


def test_truncated_checkpoint(store: ModelStore, tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src")
    checkpoint = dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="not a PyTorch checkpoint"):
        store.install([str(dataset)], progress=None)
    assert snapshot(store.root) == before


def test_no_model_at_all(store: ModelStore, tmp_path: Path) -> None:
    folder = tmp_path / "empty" / "Dataset901_Organs"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="no nnU-Net model folder"):
        store.install([str(folder)], progress=None)
    with pytest.raises(InstallRequestError, match="no such file or folder"):
        store.install([str(tmp_path / "nowhere.zip")], progress=None)
    assert snapshot(store.root) == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d, p: d.pop("labels"), "has no labels object"),
        (lambda d, p: d.update(channel_names={"0": "CT", "1": "PET"}), "exactly one input channel"),
        (lambda d, p: d["labels"].update(tumour=[1, 2]), "region-based models are not supported"),
        (lambda d, p: d["labels"].update(liver=7), r"must be 1\.\.4 without gaps or repeats"),
        (lambda d, p: p.update(configurations={"2d": {}}), "no configuration '3d_fullres'"),
        (lambda d, p: p["configurations"]["3d_fullres"].update(normalization_schemes=["ZScoreNormalization"]),
         "only one CTNormalization channel is supported"),
        (lambda d, p: p.pop("dataset_name"), "no usable dataset_name"),
    ],
)
def test_unusable_json(store: ModelStore, tmp_path: Path, edit, message: str) -> None:
    dataset = make_model(tmp_path / "src")
    folder = dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    edit(dataset_json, plans)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "plans.json").write_text(json.dumps(plans))
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match=message):
        store.install([str(dataset)], progress=None)
    assert snapshot(store.root) == before


def test_unreadable_plans(store: ModelStore, tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src")
    (dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "plans.json").write_text('{"dataset_name": ')
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="plans.json is not readable JSON"):
        store.install([str(dataset)], progress=None)
    assert snapshot(store.root) == before


def test_unknown_labels_are_listed(store: ModelStore, tmp_path: Path) -> None:
    dataset = make_model(tmp_path / "src", labels=("liver", "heart_ventricle_left", "flux_capacitor"))
    archive = zip_folder(dataset, tmp_path / "unknown.zip")
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError) as caught:
        store.install([str(archive)], progress=None)
    assert "2 label(s)" in str(caught.value)
    assert "flux_capacitor, heart_ventricle_left" in str(caught.value)
    assert "dicomio/codes.py" in str(caught.value)
    assert snapshot(store.root) == before


def test_a_failing_second_source_leaves_no_trace_of_the_first(
    store: ModelStore, tmp_path: Path, organs_zip: Path
) -> None:
    broken = make_model(tmp_path / "src", "Dataset292_Vertebrae", VERTEBRAE, checkpoints=False)
    before = snapshot(store.root)
    with pytest.raises(InvalidModelError, match="checkpoint_final.pth is missing"):
        store.install([str(organs_zip), str(broken)], name="total", progress=None)
    assert snapshot(store.root) == before


def test_unknown_model_names_the_available_ones(store: ModelStore) -> None:
    with pytest.raises(UnknownModelError, match="available: builtin, Dataset900_Existing"):
        store.model("total")
    with pytest.raises(UnknownModelError):
        store.model("../store")


# ---------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------


def test_install_from_url_resumes_a_dropped_connection(
    store: ModelStore, organs_zip: Path, serve
) -> None:
    server = serve(organs_zip)
    half = organs_zip.stat().st_size // 2
    server.drop_at, server.drops = half, 1
    digest = hashlib.sha256(organs_zip.read_bytes()).hexdigest()
    url = server.url.replace(f"/{organs_zip.name}", f"/redirect/{organs_zip.name}")
    model = store.install([url], name="organs", sha256=[digest], progress=None)
    # The Range header survives the redirect.
    assert server.ranges == [None, f"bytes={half}-"]
    assert (model.parts[0].source, model.parts[0].sha256) == (url, digest)
    assert list(store.downloads_dir.iterdir()) == []  # the archive is gone once installed


def test_interrupted_download_is_kept_and_continued_by_the_next_run(
    store: ModelStore, organs_zip: Path, serve
) -> None:
    server = serve(organs_zip)
    cut = organs_zip.stat().st_size // 3
    # Every answer stops at the same byte: the second attempt makes no progress.
    server.drop_at, server.drops = cut, 10
    before = snapshot(store.root)
    with pytest.raises(DownloadError, match="run the same command again"):
        store.install([server.url], name="organs", progress=None)
    assert snapshot(store.root, skip=".downloads") == before
    (part,) = store.downloads_dir.iterdir()
    assert part.name.endswith(f"-{organs_zip.name}.part")
    assert part.stat().st_size == cut

    server.drops = 0
    server.ranges.clear()
    model = store.install([server.url], name="organs", progress=None)
    assert server.ranges == [f"bytes={cut}-"]
    assert model.parts[0].sha256 == hashlib.sha256(organs_zip.read_bytes()).hexdigest()
    assert list(store.downloads_dir.iterdir()) == []


def test_downloaded_archive_with_wrong_checksum_is_removed(
    store: ModelStore, organs_zip: Path, serve
) -> None:
    server = serve(organs_zip)
    before = snapshot(store.root)
    with pytest.raises(ChecksumMismatchError):
        store.install([server.url], name="organs", sha256=["f" * 64], progress=None)
    # Continuing a wrong file cannot make it right: nothing is kept.
    assert snapshot(store.root, skip=".downloads") == before
    assert list(store.downloads_dir.iterdir()) == []


def test_http_errors_and_plain_http_elsewhere_are_refused(
    store: ModelStore, organs_zip: Path, serve
) -> None:
    server = serve(organs_zip)
    before = snapshot(store.root)
    with pytest.raises(DownloadError, match="HTTP 404"):
        store.install([server.url + ".missing"], name="organs", progress=None)
    with pytest.raises(DownloadError, match="only https"):
        store.install(["http://example.org/model.zip"], name="organs", progress=None)
    with pytest.raises(DownloadError, match="only https"):
        store.install([server.url.replace(f"/{organs_zip.name}", "/downgrade")], name="organs", progress=None)
    assert snapshot(store.root, skip=".downloads") == before


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def segnode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_models_install_and_list(tmp_path: Path, organs_zip: Path) -> None:
    store = tmp_path / "store"
    installed = segnode("models", "install", str(organs_zip), "--name", "organs", "--store", str(store))
    assert installed.returncode == 0, installed.stderr
    assert f"installed organs in {store / 'organs'}: 1 part(s), 4 structures" in installed.stdout

    listed = segnode("models", "list", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"model store: {store}"
    assert lines[1] == "builtin (built-in, 8 structures)"
    assert "other_soft_tissue, lung_left, lung_right, airway" in lines[2]
    organs = lines.index("organs (nnU-Net, 4 structures)")  # after the built-in's names, wrapped
    assert lines[organs + 1] == (
        f"  Dataset291_TotalSegmentator_part1_organs_1559subj: {TS_TRAINER}__nnUNetPlans__3d_fullres, "
        f"folds 0, from {organs_zip}"
    )
    assert lines[organs + 2].strip() == "spleen, kidney_right, kidney_left, liver"

    as_json = json.loads(segnode("models", "list", "--store", str(store), "--json").stdout)
    assert [m["name"] for m in as_json["models"]] == ["builtin", "organs"]
    assert as_json["models"][1]["structures"] == {str(v): name for v, name in enumerate(ORGANS, 1)}

    again = segnode("models", "install", str(organs_zip), "--name", "organs", "--store", str(store))
    assert again.returncode == 1
    assert "segnode models install: a model named 'organs' is installed already" in again.stderr


def test_store_from_environment(tmp_path: Path) -> None:
    store = tmp_path / "from-env"
    env_run = subprocess.run(
        [sys.executable, "-m", "node.cli", "models", "list"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "SEGNODE_MODELS": str(store)},
    )
    assert env_run.returncode == 0, env_run.stderr
    assert env_run.stdout.splitlines()[0] == f"model store: {store}"
    assert not store.exists()  # listing creates nothing


def test_store_of_a_node_configuration(tmp_path: Path, organs_zip: Path) -> None:
    """`--config` installs where that node's workers look (node.models_dir)."""
    store = tmp_path / "node-models"
    config = tmp_path / "segnode.yaml"
    config.write_text(f"node:\n  storage_dir: {tmp_path / 'var'}\n  models_dir: {store}\n")
    installed = segnode("models", "install", str(organs_zip), "--name", "organs", "--config", str(config))
    assert installed.returncode == 0, installed.stderr
    assert (store / "organs").is_dir()
    listed = segnode("models", "list", "--config", str(config))
    assert listed.stdout.splitlines()[0] == f"model store: {store}"
    assert "organs (nnU-Net, 4 structures)" in listed.stdout

    config.write_text("node:\n  models_dir: [not, a, path]\n")
    refused = segnode("models", "list", "--config", str(config))
    assert refused.returncode == 1
    assert "node.models_dir" in refused.stderr
    both = segnode("models", "list", "--config", str(config), "--store", str(store))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
