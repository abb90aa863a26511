"""Fitted models as data: an artifact is an ``.npz`` archive (numpy's zip of arrays), never a
pickle.

Its ``state.json`` member holds the model's state as JSON: its settings and learned scalars,
with each array replaced by ``{"array": "<member>", "dtype": "<f8", "shape": [n]}``, the name
of the ``.npy`` member that holds it and what its header says (format version 1 had the name
alone). Beside the state it records the artifact's ``kind``, ``FORMAT_VERSION`` and the
versions of the libraries that fitted it. Reading parses JSON and ``.npy`` arrays with
``allow_pickle=False``: loading a model runs no code from the database, and does not depend on
the classes or library versions that wrote it (docs/models.md).
"""

from __future__ import annotations

import io
import json
import zipfile
from importlib import metadata
from typing import Any

import numpy as np

FORMAT = "kpi-pipeline model"
FORMAT_VERSION = 2
"""Raised when the meaning of a stored state changes; an artifact of a newer version is
refused rather than misread. 2: each array's dtype and shape are in the JSON as well (read
without parsing the ``.npy`` header, a third of the time of loading a model); 1 is still read."""

LIBRARIES = ("numpy", "scikit-learn", "prophet")
STATE_MEMBER = "state.json"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_2_OR_LATER = b"\x80"


class UnreadableArtifact(ValueError):
    """A registry artifact that this version cannot read (a pickle, a newer format, another
    kind)."""


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries whose models the artifacts hold."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def pack(kind: str, state: dict[str, Any]) -> bytes:
    """``state`` (JSON values, numpy arrays and bytes, nested in dicts and lists) as an
    artifact of ``kind``."""
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(key): encode(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(item) for item in value]
        if isinstance(value, (bytes, bytearray)):
            value = np.frombuffer(bytes(value), dtype=np.uint8)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError("object arrays are not stored (they would need pickle)")
            name = f"a{len(arrays)}"
            arrays[name] = value = np.asarray(value, order="C")  # a 0-d array stays 0-d
            return {"array": name, "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, np.generic):
            return value.item()
        return value

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "libraries": library_versions(),
        "state": encode(state),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # JSON writes floats by repr, so every learned number reads back to the same bits.
        archive.writestr(_member(STATE_MEMBER), json.dumps(document, separators=(",", ":")))
        for name, array in arrays.items():
            with archive.open(_member(f"{name}.npy"), "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def _member(name: str) -> zipfile.ZipInfo:
    """A compressed member with a fixed date: the same state packs to the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def read_document(data: bytes, kind: str) -> tuple[dict[str, Any], zipfile.ZipFile]:
    """The JSON document of an artifact of ``kind`` (its arrays still in the archive)."""
    if data[:1] == PICKLE_PROTOCOL_2_OR_LATER:
        raise UnreadableArtifact(
            f"this {kind} model is a pickle written by kpi-pipeline before models were stored "
            "as data; pickles are never loaded. Upgrading the database (kpi-pipeline migrate, "
            "or any command that opens it) converts them; if one was written since, retrain "
            "the KPI"
        )
    if data[:4] != ZIP_MAGIC:
        raise UnreadableArtifact(f"this {kind} model is not a kpi-pipeline model artifact")
    archive = zipfile.ZipFile(io.BytesIO(data))
    document = json.loads(archive.read(STATE_MEMBER))
    if document.get("format") != FORMAT or document.get("kind") != kind:
        raise UnreadableArtifact(f"expected a {kind} model, found {document.get('format')!r} {document.get('kind')!r}")
    if document["format_version"] > FORMAT_VERSION:
        raise UnreadableArtifact(
            f"this {kind} model has format version {document['format_version']}, written by a "
            f"newer kpi-pipeline; this one reads up to version {FORMAT_VERSION}"
        )
    return document, archive


def unpack(data: bytes, kind: str) -> dict[str, Any]:
    """The state ``pack`` stored in an artifact of ``kind`` (its arrays as numpy arrays, its
    bytes as uint8 arrays); raises ``UnreadableArtifact`` for anything else."""
    document, archive = read_document(data, kind)

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if value.keys() == {"array", "dtype", "shape"}:
                return _array(archive.read(f"{value['array']}.npy"), value["dtype"], value["shape"])
            if value.keys() == {"array"}:  # format version 1
                with archive.open(f"{value['array']}.npy") as member:
                    return np.lib.format.read_array(member, allow_pickle=False)
            return {key: decode(item) for key, item in value.items()}
        if isinstance(value, list):
            return [decode(item) for item in value]
        return value

    return decode(document["state"])


def _array(member: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """The array of a ``.npy`` member whose dtype and shape the JSON gives: its data are the
    member's last bytes (C order, as ``pack`` writes them), so the header is not parsed."""
    kind = np.dtype(dtype)
    if kind.hasobject:
        raise UnreadableArtifact("an artifact array of objects is never read (it would need pickle)")
    count = int(np.prod(shape, dtype=np.int64))
    size = count * kind.itemsize
    if size > len(member):
        raise UnreadableArtifact(f"an artifact array is shorter than its {dtype} {shape} says")
    # A bytearray, so that the array is writable like one ``np.load`` returns.
    data = bytearray(member[len(member) - size :]) if size else bytearray()
    return np.frombuffer(data, dtype=kind, count=count).reshape(shape)
