"""The model store: the nnU-Net models installed in one folder.

A model is installed from an https URL, a zip or a folder holding nnU-Net v2
training output, such as TotalSegmentator's published weight zips. Hospitals
without internet access copy the zips in, so every source goes through the
same checks. A model that has been installed is known to be complete: the
store never holds half a model, because

* the source is unpacked into a temporary folder inside the store (same file
  system, so the final move is a rename), checked there, its files fsync'ed,
  and only then renamed to its name: either the whole model appears or none;
* every failure (a bad zip, a missing checkpoint, a checksum mismatch, an
  interrupted download, a label without codes) removes the temporary folder
  and leaves the store as it was, except for downloads kept to resume: an
  interrupted one, and complete ones of an installation that failed for
  another source's sake. A download whose content was refused is removed,
  and every download once its model is installed.

Layout (the root is ``--store`` or ``node.models_dir``, by default
``$SEGNODE_MODELS``, else ``~/.local/share/segnode/models``)::

    <root>/
      <name>/                       one folder per model
        model.json                  the manifest (InstalledModel)
        <dataset>/                  one part: plans.json's dataset_name,
          <trainer>__<plans>__<configuration>/   nnU-Net's own layout
            dataset.json  plans.json  fold_0/checkpoint_final.pth ...
      .downloads/<hash>-<file>.part downloads in progress (kept to resume)
      .install-*/                   an installation in progress (one left
                                    by a killed process can be deleted)

Multi-part models. TotalSegmentator's full-resolution ``total`` task is five
nnU-Net datasets (291 to 295), each segmenting a subset of the 117
structures with its own label values 1..n. Installed under one name they
form one model whose label values follow the parts in the order they were
given, each part's values shifted by the largest value of the parts before
it: Dataset291..295 given in that order yield TotalSegmentator's own
numbering of the 117 classes.

What a source may look like. Any folder with ``fold_N`` subfolders is a
trained configuration, at any depth of the zip or folder: at its top, inside
its ``DatasetNNN_...`` folder (TotalSegmentator's zips), or inside one more
wrapping folder. Each must hold dataset.json (one input channel, labels
1..n that all have codes in ``dicomio.codes``), plans.json (parsed by the
engine's own parser, so a configuration it cannot run is refused now and
not when the first series arrives) and a ``checkpoint_final.pth`` in every
fold folder. Checkpoints are checked to be complete PyTorch archives but
not loaded: unpickling one can run code, and the engine does it once, when
the model is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TextIO

from dicomio.codes import STRUCTURE_CODES
from dicomio.files import fsync_folder, fsync_tree
from inference.download import download, is_url

__all__ = [
    "BUILTIN",
    "MANIFEST",
    "ChecksumMismatchError",
    "InstallRequestError",
    "InstalledModel",
    "InvalidModelError",
    "ManifestError",
    "ModelConfiguration",
    "ModelExistsError",
    "ModelLabel",
    "ModelPart",
    "ModelStore",
    "ModelStoreError",
    "UnknownModelError",
]

#: Name of the built-in segmenter, always available and never on disk: no
#: installed model may take it (inference/segmenters.py opens it).
BUILTIN: Final = "builtin"

#: The manifest inside each model folder.
MANIFEST: Final = "model.json"

_MANIFEST_VERSION: Final = 1
_DOWNLOADS: Final = ".downloads"
_STAGING_PREFIX: Final = ".install-"
_CHECKPOINT: Final = "checkpoint_final.pth"
_FOLD: Final = re.compile(r"fold_(\d+|all)")
# Dot-free first character: names starting with "." are the store's own folders.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DATASET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX_SHA256: Final = re.compile(r"[0-9a-f]{64}")
# macOS's archiver adds resource forks under this folder; they mirror the
# real tree (fold_0/._checkpoint_final.pth) and would look like a broken copy.
_MACOS_METADATA: Final = "__MACOSX/"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ModelStoreError(Exception):
    """Anything that stops a model from being installed or opened."""


class InstallRequestError(ModelStoreError):
    """Arguments of an installation that cannot work (name, checksums, sources)."""


class InvalidModelError(ModelStoreError):
    """A source that is not a complete, usable nnU-Net model.

    Parameters
    ----------
    source : str
        The URL, zip or folder as given.
    detail : str
        What is missing or wrong, naming the file inside the source.
    """

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


class ChecksumMismatchError(InvalidModelError):
    """An archive whose SHA-256 differs from the one given."""

    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(source, f"SHA-256 is {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class ModelExistsError(ModelStoreError):
    """A model of that name is installed already."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(
            f"a model named {name!r} is installed already ({path}); "
            "choose another --name or remove that folder first"
        )
        self.name = name
        self.path = path


class UnknownModelError(ModelStoreError):
    """A model name that is neither the built-in one nor installed."""

    def __init__(self, name: str, available: Sequence[str], store: Path) -> None:
        super().__init__(f"no model named {name!r} in {store}; available: {', '.join(available)}")
        self.name = name
        self.available = tuple(available)


class ManifestError(ModelStoreError):
    """A ``model.json`` that cannot be read (edited or damaged by hand)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


# ---------------------------------------------------------------------------
# What is installed
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLabel:
    """A label value and the structure (a key of ``dicomio.codes``) it marks."""

    value: int
    structure: str


@dataclass(frozen=True)
class ModelConfiguration:
    """One trained nnU-Net configuration of a part.

    Attributes
    ----------
    folder : str
        ``<trainer>__<plans>__<configuration>``, nnU-Net's folder name.
    trainer, plans, configuration : str
        The three fields of that name; ``configuration`` is a key of
        ``plans.json``'s ``configurations``.
    folds : tuple of str
        The folds with a final checkpoint (``"0"``..., or ``"all"``); the
        engine ensembles them.
    """

    folder: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[str, ...]


@dataclass(frozen=True)
class ModelPart:
    """One nnU-Net dataset of a model, as it came from one source.

    Attributes
    ----------
    dataset : str
        ``dataset_name`` of plans.json, e.g.
        ``Dataset297_TotalSegmentator_total_3mm_1559subj``; the part's folder.
    source : str
        The URL, zip or folder it was installed from.
    sha256 : str or None
        SHA-256 of the archive; None for a folder.
    configurations : tuple of ModelConfiguration
        Its trained configurations.
    labels : tuple of ModelLabel
        dataset.json's labels without background, in the part's own values.
    """

    dataset: str
    source: str
    sha256: str | None
    configurations: tuple[ModelConfiguration, ...]
    labels: tuple[ModelLabel, ...]

    def configuration_dir(self, model_dir: Path, configuration: ModelConfiguration) -> Path:
        """The folder nnU-Net's predictor is initialised from."""
        return model_dir / self.dataset / configuration.folder


@dataclass(frozen=True)
class InstalledModel:
    """A model in the store, as its manifest describes it.

    Attributes
    ----------
    name : str
        What ``--model`` selects.
    path : Path
        Its folder.
    installed_at : str
        ISO 8601 time, UTC.
    parts : tuple of ModelPart
        Its nnU-Net datasets, in the order their label values are combined.
    structures : tuple of ModelLabel
        Every structure the model segments, with its value in the combined
        label map.
    """

    name: str
    path: Path
    installed_at: str
    parts: tuple[ModelPart, ...]
    structures: tuple[ModelLabel, ...]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


class ModelStore:
    """The models installed in one folder.

    Parameters
    ----------
    root : Path
        The store folder; created by the first installation.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def downloads_dir(self) -> Path:
        """Where downloads are kept until their model is installed."""
        return self.root / _DOWNLOADS

    def models(self) -> tuple[InstalledModel, ...]:
        """Every installed model, by name.

        Raises
        ------
        ManifestError
            If a manifest cannot be read.
        """
        if not self.root.is_dir():
            return ()
        return tuple(
            _read_manifest(folder / MANIFEST)
            for folder in sorted(self.root.iterdir())
            if not folder.name.startswith(".") and (folder / MANIFEST).is_file()
        )

    def model(self, name: str) -> InstalledModel:
        """The installed model `name`.

        Raises
        ------
        UnknownModelError
            If there is none of that name.
        """
        manifest = self.root / name / MANIFEST
        if _NAME.fullmatch(name) is None or not manifest.is_file():
            available = [BUILTIN, *(model.name for model in self.models())]
            raise UnknownModelError(name, available, self.root)
        return _read_manifest(manifest)

    def install(
        self,
        sources: Sequence[str],
        *,
        name: str | None = None,
        sha256: Sequence[str] = (),
        progress: TextIO | None = sys.stderr,
    ) -> InstalledModel:
        """Install one model from one or more sources.

        Parameters
        ----------
        sources : sequence of str
            https URLs, zips or folders, each holding one or more nnU-Net
            datasets; several make a multi-part model, combined in this order.
        name : str, optional
            The model's name; by default the dataset name of a single-part
            model. Required when there are several parts.
        sha256 : sequence of str
            Expected SHA-256 (hex) of each source archive, in source order;
            empty to skip the check.
        progress : text stream or None
            Where download progress is drawn.

        Returns
        -------
        InstalledModel
            The model as registered.

        Raises
        ------
        InstallRequestError
            For a bad name, checksum count, or a source that does not exist.
        ModelExistsError
            If the name is taken.
        InvalidModelError
            If a source is not a complete nnU-Net model with known labels
            (ChecksumMismatchError for a wrong SHA-256).
        inference.download.DownloadError
            If a download stopped; its ``.part`` file is kept to resume.
        """
        expected = _expected_digests(sources, sha256)
        if name is not None:
            self._check_free_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            model_dir = staging / "model"
            model_dir.mkdir()
            parts: list[ModelPart] = []
            downloads: list[Path] = []
            for index, (source, digest) in enumerate(zip(sources, expected, strict=True)):
                staged, downloaded = self._stage(
                    source, digest, staging / f"source{index}", model_dir, progress
                )
                parts.extend(staged)
                if downloaded is not None:
                    downloads.append(downloaded)
            model = _register(name, parts, self.root)
            self._check_free_name(model.name)
            _write_manifest(model, model_dir / MANIFEST)
            fsync_tree(model_dir)
            try:
                os.rename(model_dir, model.path)
            except OSError as exc:
                # Another installation of the same name finished meanwhile.
                raise ModelExistsError(model.name, model.path) from exc
            fsync_folder(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for downloaded in downloads:
            downloaded.unlink()
        return model

    def _check_free_name(self, name: str) -> None:
        if name == BUILTIN or _NAME.fullmatch(name) is None:
            raise InstallRequestError(
                f"model name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit, and not {BUILTIN!r}"
            )
        if (self.root / name).exists():
            raise ModelExistsError(name, self.root / name)

    def _stage(
        self, source: str, digest: str | None, workdir: Path, model_dir: Path, progress: TextIO | None
    ) -> tuple[list[ModelPart], Path | None]:
        """Bring `source` into `workdir`, check it, move its parts into `model_dir`.

        Returns the parts and, for a URL, the downloaded archive. That file
        is removed here when its content is refused (continuing it next time
        cannot help) and by the caller once the model is installed; when the
        installation fails for another reason (a later source, the name) it
        stays, so that trying again does not download it again.
        """
        workdir.mkdir()
        if is_url(source):
            archive = download(source, self.downloads_dir, progress=progress).path
            try:
                return _stage_archive(source, archive, digest, workdir, model_dir), archive
            except InvalidModelError:
                archive.unlink()
                raise
        path = Path(source).expanduser()
        if not path.exists():
            raise InstallRequestError(f"{source}: no such file or folder, and not an http(s) URL")
        # The manifest records where the model came from, wherever it is run from.
        path = path.resolve()
        if path.is_dir():
            if digest is not None:
                raise InstallRequestError(f"{source}: --sha256 checks archives, not folders")
            shutil.copytree(path, workdir / path.name)
            return _collect_parts(str(path), None, workdir, model_dir), None
        return _stage_archive(str(path), path, digest, workdir, model_dir), None


# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------


def _expected_digests(sources: Sequence[str], sha256: Sequence[str]) -> list[str | None]:
    if not sources:
        raise InstallRequestError("no source given")
    if not sha256:
        return [None] * len(sources)
    if len(sha256) != len(sources):
        raise InstallRequestError(
            f"{len(sha256)} checksum(s) for {len(sources)} source(s): give one --sha256 per source, "
            "in the same order, or none"
        )
    digests = [value.strip().lower() for value in sha256]
    for value in digests:
        if _HEX_SHA256.fullmatch(value) is None:
            raise InstallRequestError(f"--sha256 {value!r} is not 64 hexadecimal digits")
    return list(digests)


def _stage_archive(
    source: str, archive: Path, expected: str | None, workdir: Path, model_dir: Path
) -> list[ModelPart]:
    digest = _sha256(archive)
    if expected is not None and digest != expected:
        raise ChecksumMismatchError(source, expected, digest)
    _extract(source, archive, workdir)
    return _collect_parts(source, digest, workdir, model_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _extract(source: str, archive: Path, workdir: Path) -> None:
    """Unpack a zip, refusing members that would land outside `workdir`.

    zipfile checks each member's CRC-32 as it is read, so a damaged archive
    fails here rather than as a truncated checkpoint at inference time.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                if member.filename.startswith(_MACOS_METADATA):
                    continue
                target = _member_target(source, workdir, member.filename)
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as packed, target.open("wb") as unpacked:
                    shutil.copyfileobj(packed, unpacked, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise InvalidModelError(source, f"not a readable zip archive ({exc})") from exc


def _member_target(source: str, workdir: Path, member: str) -> Path:
    relative = Path(member)
    if relative.is_absolute() or ".." in relative.parts:
        raise InvalidModelError(source, f"archive member {member!r} points outside the archive")
    return workdir / relative


def _collect_parts(source: str, digest: str | None, workdir: Path, model_dir: Path) -> list[ModelPart]:
    """The nnU-Net datasets found in `workdir`, moved into `model_dir`.

    A configuration folder is any folder with ``fold_*`` subfolders, at any
    depth: a zip may hold it at its top, inside its ``DatasetNNN_...``
    folder (TotalSegmentator), or inside one more wrapping folder.
    """
    found = [
        _read_configuration(source, folder, workdir) for folder in _configuration_dirs(workdir)
    ]
    if not found:
        raise InvalidModelError(
            source,
            "no nnU-Net model folder: expected <trainer>__<plans>__<configuration>/ with "
            f"dataset.json, plans.json and fold_N/{_CHECKPOINT}",
        )
    by_dataset: dict[str, list[_Configuration]] = {}
    for configuration in found:
        by_dataset.setdefault(configuration.dataset, []).append(configuration)
    parts = []
    for dataset, configurations in sorted(by_dataset.items()):
        first = configurations[0]
        for other in configurations[1:]:
            if other.labels != first.labels:
                raise InvalidModelError(
                    source,
                    f"{other.relative} and {first.relative} are both {dataset} but their "
                    "dataset.json labels differ",
                )
        part_dir = model_dir / dataset
        if part_dir.exists():
            raise InvalidModelError(source, f"dataset {dataset} is given twice")
        part_dir.mkdir()
        for configuration in configurations:
            os.rename(configuration.path, part_dir / configuration.entry.folder)
        parts.append(
            ModelPart(
                dataset=dataset,
                source=source,
                sha256=digest,
                configurations=tuple(c.entry for c in configurations),
                labels=first.labels,
            )
        )
    return parts


def _configuration_dirs(root: Path) -> Iterator[Path]:
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        if any(_FOLD.fullmatch(name) for name in subfolders):
            subfolders.clear()
            yield Path(folder)


@dataclass(frozen=True)
class _Configuration:
    """A configuration folder found in a source, before it is moved into the model."""

    path: Path
    relative: str
    dataset: str
    entry: ModelConfiguration
    labels: tuple[ModelLabel, ...]


def _read_configuration(source: str, folder: Path, workdir: Path) -> _Configuration:
    relative = folder.relative_to(workdir).as_posix()
    fields = folder.name.split("__")
    if len(fields) != 3 or not all(fields):
        raise InvalidModelError(
            source,
            f"{relative}: an nnU-Net model folder is named <trainer>__<plans>__<configuration>, "
            "e.g. nnUNetTrainer__nnUNetPlans__3d_fullres",
        )
    trainer, plans_name, configuration = fields
    plans = _read_json(source, folder / "plans.json", relative)
    dataset = plans.get("dataset_name")
    if not isinstance(dataset, str) or _DATASET_NAME.fullmatch(dataset) is None:
        raise InvalidModelError(source, f"{relative}/plans.json: no usable dataset_name ({dataset!r})")
    _check_engine_runs(source, folder / "plans.json", plans, configuration, relative)
    dataset_json = _read_json(source, folder / "dataset.json", relative)
    _check_single_channel(source, dataset_json, relative)
    return _Configuration(
        path=folder,
        relative=relative,
        dataset=dataset,
        entry=ModelConfiguration(
            folder=folder.name,
            trainer=trainer,
            plans=plans_name,
            configuration=configuration,
            folds=_folds(source, folder, relative),
        ),
        labels=_labels(source, dataset_json, relative),
    )


def _check_engine_runs(
    source: str, path: Path, plans: dict[str, Any], configuration: str, relative: str
) -> None:
    """Refuse a configuration the engine cannot run (2-D, another normalisation,
    an unknown architecture) now, rather than when the first series arrives."""
    # Imported here: it imports torch, which listing the store does not need.
    from inference.nnunet_model import ModelLoadError, parse_configuration

    try:
        parse_configuration(path, plans, configuration)
    except ModelLoadError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise InvalidModelError(source, f"{relative}/plans.json: {detail}") from exc


def _read_json(source: str, path: Path, relative: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelError(source, f"{relative}/{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(source, f"{relative}/{path.name} is not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InvalidModelError(source, f"{relative}/{path.name} is not a JSON object")
    return value


def _check_single_channel(source: str, dataset_json: dict[str, Any], relative: str) -> None:
    """segnode feeds one CT volume; a model trained on several channels cannot run."""
    channels = dataset_json.get("channel_names")
    if not isinstance(channels, dict) or len(channels) != 1:
        raise InvalidModelError(
            source,
            f"{relative}/dataset.json: channel_names must name exactly one input channel (CT), "
            f"not {channels!r}",
        )


def _labels(source: str, dataset_json: dict[str, Any], relative: str) -> tuple[ModelLabel, ...]:
    where = f"{relative}/dataset.json"
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise InvalidModelError(source, f"{where} has no labels object")
    result = []
    for structure, value in labels.items():
        if isinstance(value, list):
            # Region-based training: overlapping regions, not one label map.
            raise InvalidModelError(
                source,
                f"{where}: label {structure!r} is a region {value}; region-based models are not supported",
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidModelError(
                source, f"{where}: label {structure!r} has value {value!r}, not an integer >= 0"
            )
        if value:
            result.append(ModelLabel(value, structure))
    if not result:
        raise InvalidModelError(source, f"{where} has no label besides background")
    values = sorted(label.value for label in result)
    if values != list(range(1, len(values) + 1)):
        raise InvalidModelError(
            source, f"{where}: label values must be 1..{len(values)} without gaps or repeats, not {values}"
        )
    unknown = sorted(label.structure for label in result if label.structure not in STRUCTURE_CODES)
    if unknown:
        raise InvalidModelError(
            source,
            f"{len(unknown)} label(s) of {where} have no codes in dicomio/codes.py, so no DICOM-SEG "
            f"could name them: {', '.join(unknown)}",
        )
    return tuple(sorted(result, key=lambda label: label.value))


def _folds(source: str, folder: Path, relative: str) -> tuple[str, ...]:
    """Folds with a final checkpoint; a fold folder without one is a damaged copy."""
    folds = []
    for fold_dir in sorted(folder.iterdir()):
        match = _FOLD.fullmatch(fold_dir.name)
        if match is None or not fold_dir.is_dir():
            continue
        checkpoint = fold_dir / _CHECKPOINT
        if not checkpoint.is_file():
            raise InvalidModelError(source, f"{relative}/{fold_dir.name}/{_CHECKPOINT} is missing")
        # torch.save writes a zip; a truncated one has no central directory.
        if not zipfile.is_zipfile(checkpoint):
            raise InvalidModelError(
                source, f"{relative}/{fold_dir.name}/{_CHECKPOINT} is not a PyTorch checkpoint (truncated?)"
            )
        folds.append(match.group(1))
    return tuple(sorted(folds, key=lambda fold: (not fold.isdigit(), int(fold) if fold.isdigit() else 0)))


def _register(name: str | None, parts: Sequence[ModelPart], root: Path) -> InstalledModel:
    """The model the parts form: its name, and its combined label values."""
    if name is None:
        if len(parts) != 1:
            raise InstallRequestError(
                f"the sources hold {len(parts)} datasets ({', '.join(p.dataset for p in parts)}): "
                "name the model with --name"
            )
        name = parts[0].dataset
    structures = []
    owner: dict[str, str] = {}
    offset = 0
    for part in parts:
        for label in part.labels:
            if label.structure in owner:
                raise InvalidModelError(
                    part.source,
                    f"{part.dataset} and {owner[label.structure]} both segment {label.structure!r}",
                )
            owner[label.structure] = part.dataset
            structures.append(ModelLabel(offset + label.value, label.structure))
        offset += max(label.value for label in part.labels)
    return InstalledModel(
        name=name,
        path=root / name,
        installed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parts=tuple(parts),
        structures=tuple(structures),
    )


# ---------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------


def _label_object(labels: Sequence[ModelLabel]) -> dict[str, str]:
    return {str(label.value): label.structure for label in labels}


def _write_manifest(model: InstalledModel, path: Path) -> None:
    document = {
        "manifest_version": _MANIFEST_VERSION,
        "name": model.name,
        "installed_at": model.installed_at,
        "parts": [
            {
                "dataset": part.dataset,
                "source": part.source,
                "sha256": part.sha256,
                "configurations": [
                    {
                        "folder": c.folder,
                        "trainer": c.trainer,
                        "plans": c.plans,
                        "configuration": c.configuration,
                        "folds": list(c.folds),
                    }
                    for c in part.configurations
                ],
                "labels": _label_object(part.labels),
            }
            for part in model.parts
        ],
        "structures": _label_object(model.structures),
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _read_manifest(path: Path) -> InstalledModel:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["manifest_version"] != _MANIFEST_VERSION:
            raise ManifestError(path, f"manifest version {document['manifest_version']} is not supported")
        return InstalledModel(
            name=str(document["name"]),
            path=path.parent,
            installed_at=str(document["installed_at"]),
            parts=tuple(
                ModelPart(
                    dataset=str(part["dataset"]),
                    source=str(part["source"]),
                    sha256=part["sha256"],
                    configurations=tuple(
                        ModelConfiguration(
                            folder=str(c["folder"]),
                            trainer=str(c["trainer"]),
                            plans=str(c["plans"]),
                            configuration=str(c["configuration"]),
                            folds=tuple(str(fold) for fold in c["folds"]),
                        )
                        for c in part["configurations"]
                    ),
                    labels=_model_labels(part["labels"]),
                )
                for part in document["parts"]
            ),
            structures=_model_labels(document["structures"]),
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(path, f"cannot be read ({exc})") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(path, f"is not a segnode model manifest ({exc!r})") from exc


def _model_labels(labels: dict[str, str]) -> tuple[ModelLabel, ...]:
    return tuple(sorted((ModelLabel(int(value), str(name)) for value, name in labels.items()),
                        key=lambda label: label.value))
