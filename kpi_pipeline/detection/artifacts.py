"""Fitted models as data, never a pickle.

An artifact (format version 3) is ``MAGIC`` and three parts, each preceded by its length (4
bytes, little-endian): the **document**, JSON, zlib-compressed; the **body**, every array's
bytes one after the other (C order, each starting at a multiple of 8 bytes), zlib-compressed;
and the **blobs**, the state's byte strings (already compressed data, such as Prophet's JSON)
one after the other, as they are. The document holds the artifact's ``kind``,
``FORMAT_VERSION``, the versions of the libraries that fitted it, and the model's state: its
settings and learned scalars, with each array replaced by ``{"offset": <byte in the body>,
"dtype": "<f8", "shape": [n]}`` and each byte string by ``{"blob": <byte in the blobs>, "size":
n, "crc32": <its CRC-32>}`` (checked on reading). Reading parses JSON and takes each array's
bytes from the body with the dtype and shape the document gives (no pickle, no object
arrays): loading a model runs no code from the database, and does not depend on the classes
or library versions that wrote it (docs/models.md). The document reads without the rest
(what choosing a scoring window needs), the body inflates in one call, and the blobs are not
inflated at all.

Versions 1 and 2 were ``.npz`` archives (numpy's zip of ``.npy`` arrays) with a ``state.json``
member, arrays named ``{"array": "a3"}`` (2: with their dtype and shape): still read.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

FORMAT = "kpi-pipeline model"
FORMAT_VERSION = 3
"""Raised when the meaning of a stored state changes; an artifact of a newer version is
refused rather than misread. 3: a document and a body of raw arrays, each one zlib stream,
instead of a zip archive of ``.npy`` members (a zip costs an inflate, a CRC and a header per
member: two thirds of the time of loading a model); 2: each array's dtype and shape in the
JSON. 1 and 2 are still read."""

MAGIC = b"KPIMODEL"
"""The first bytes of a version 3 (or later) artifact."""
LIBRARIES = ("numpy", "scikit-learn", "prophet")
STATE_MEMBER = "state.json"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_2_OR_LATER = b"\x80"
ALIGN = 8
"""Each array's bytes start at a multiple of this in the body (aligned for any numeric dtype)."""
LEVEL = 6
"""zlib's compression level (its default, and the zip archives')."""


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
    body, blobs = bytearray(), bytearray()

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(key): encode(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(item) for item in value]
        if isinstance(value, (bytes, bytearray)):
            blobs.extend(value)
            return {"blob": len(blobs) - len(value), "size": len(value), "crc32": zlib.crc32(value)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError("object arrays are not stored (they would need pickle)")
            value = np.asarray(value, order="C")  # a 0-d array stays 0-d
            body.extend(bytes(-len(body) % ALIGN))
            offset = len(body)
            body.extend(value.tobytes(order="C"))
            return {"offset": offset, "dtype": value.dtype.str, "shape": list(value.shape)}
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
    # JSON writes floats by repr, so every learned number reads back to the same bits.
    header = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), LEVEL)
    arrays = zlib.compress(bytes(body), LEVEL)
    return b"".join([MAGIC, _length(header), header, _length(arrays), arrays, _length(blobs), blobs])


def _length(stream: bytes | bytearray) -> bytes:
    return len(stream).to_bytes(4, "little")


def read_document(data: bytes, kind: str) -> dict[str, Any]:
    """The JSON document of an artifact of ``kind``, its arrays not read. From version 3 on,
    the artifact's first bytes are enough (its first ``DOCUMENT_HEAD`` bytes, unless the
    document is unusually large)."""
    return _open(data, kind)[0]


DOCUMENT_HEAD = 8192
"""Bytes at the start of an artifact that hold its document, but for an unusually large one (a
compressed ``ensemble`` document is 1-2 KB, its whole artifact about 50 KB): what a reader of
documents alone fetches."""


def unpack(data: bytes, kind: str) -> dict[str, Any]:
    """The state ``pack`` stored in an artifact of ``kind`` (its arrays as numpy arrays, its
    bytes as uint8 arrays); raises ``UnreadableArtifact`` for anything else."""
    document, array = _open(data, kind)
    version = document["format_version"]

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if _is_array(value, version):
                return array(value)
            return {key: decode(item) for key, item in value.items()}
        if isinstance(value, list):
            return [decode(item) for item in value]
        return value

    return decode(document["state"])


def _is_array(value: dict, version: int) -> bool:
    if version >= 3:
        return value.keys() == {"offset", "dtype", "shape"} or value.keys() == {"blob", "size", "crc32"}
    return value.keys() == {"array", "dtype", "shape"} or value.keys() == {"array"}


def _open(data: bytes, kind: str) -> tuple[dict[str, Any], Callable[[dict], np.ndarray]]:
    """The document of an artifact of ``kind`` and a reader of the arrays it describes."""
    if data[:1] == PICKLE_PROTOCOL_2_OR_LATER:
        raise UnreadableArtifact(
            f"this {kind} model is a pickle written by kpi-pipeline before models were stored "
            "as data; pickles are never loaded. Upgrading the database (kpi-pipeline migrate, "
            "or any command that opens it) converts them; if one was written since, retrain "
            "the KPI"
        )
    if data[: len(MAGIC)] == MAGIC:
        document, array = _open_version_3(data, kind)
        container_versions = range(3, 1 << 31)
    elif data[:4] == ZIP_MAGIC:
        document, array = _open_archive(data)
        container_versions = range(1, 3)
    else:
        raise UnreadableArtifact(f"this {kind} model is not a kpi-pipeline model artifact")
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("kind") != kind:
        found = document if not isinstance(document, dict) else (document.get("format"), document.get("kind"))
        raise UnreadableArtifact(f"expected a {kind} model, found {found!r}")
    version = document.get("format_version")
    if not isinstance(version, int) or version not in container_versions:
        # Which entries are arrays depends on the version: a wrong one would misread them.
        raise UnreadableArtifact(
            f"this {kind} model artifact is damaged (format version {version!r} in this container)"
        )
    if version > FORMAT_VERSION:
        raise UnreadableArtifact(
            f"this {kind} model has format version {document['format_version']}, written by a "
            f"newer kpi-pipeline; this one reads up to version {FORMAT_VERSION}"
        )
    return document, array


def _open_version_3(data: bytes, kind: str) -> tuple[Any, Callable[[dict], np.ndarray]]:
    """The document, and a reader of the arrays that finds the body and the blobs on first use:
    the document alone reads from the artifact's first bytes (``document_size``)."""
    try:
        header, document_end = _stream(data, len(MAGIC))
        document = json.loads(zlib.decompress(header))
    except (ValueError, zlib.error) as error:  # json's errors are ValueErrors
        raise UnreadableArtifact(f"this {kind} model artifact is damaged ({error})") from None
    parts: list[tuple[bytearray, bytes]] = []

    def array(value: dict) -> np.ndarray:
        if not parts:  # the body inflated once, on the first array read
            try:
                compressed, end = _stream(data, document_end)
                blobs, _ = _stream(data, end)
                # A bytearray, so that the arrays are writable like those ``np.load`` returns.
                parts.append((bytearray(zlib.decompress(compressed)), blobs))
            except (ValueError, zlib.error) as error:
                raise UnreadableArtifact(f"this {kind} model artifact is damaged ({error})") from None
        body, blobs = parts[0]
        if "blob" in value:  # bytes, as uint8 (as versions 1 and 2 read them)
            start, size = int(value["blob"]), int(value["size"])
            blob = bytearray(blobs[start : start + size])
            if len(blob) == size and zlib.crc32(blob) != value["crc32"]:
                raise UnreadableArtifact(f"this {kind} model artifact is damaged (a byte string's CRC differs)")
            return _array(blob, "|u1", [size], 0)
        return _array(body, value["dtype"], value["shape"], int(value["offset"]))

    return document, array


def _stream(data: bytes, at: int) -> tuple[bytes, int]:
    """The length-prefixed stream of ``data`` at ``at``, and where it ends."""
    if len(data) < at + 4:
        raise ValueError("truncated")
    end = at + 4 + int.from_bytes(data[at : at + 4], "little")
    if len(data) < end:
        raise ValueError("truncated")
    return data[at + 4 : end], end


def _open_archive(data: bytes) -> tuple[Any, Callable[[dict], np.ndarray]]:
    """Format versions 1 and 2: a zip of ``state.json`` and ``.npy`` members."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    document = json.loads(archive.read(STATE_MEMBER))

    def array(value: dict) -> np.ndarray:
        if "dtype" not in value:  # format version 1: the dtype and shape in the .npy header
            with archive.open(f"{value['array']}.npy") as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        # The data are the member's last bytes (C order), so the header is not parsed.
        data = bytearray(archive.read(f"{value['array']}.npy"))
        size = _size(value["dtype"], value["shape"])
        return _array(data, value["dtype"], value["shape"], max(0, len(data) - size))

    return document, array


def _size(dtype: str, shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _array(buffer: bytearray, dtype: str, shape: list[int], offset: int) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` whose bytes start at ``offset`` of ``buffer``."""
    kind = np.dtype(dtype)
    if kind.hasobject:
        raise UnreadableArtifact("an artifact array of objects is never read (it would need pickle)")
    count = int(np.prod(shape, dtype=np.int64))
    if offset < 0 or offset + count * kind.itemsize > len(buffer):
        raise UnreadableArtifact(f"an artifact array is shorter than its {dtype} {shape} says")
    return np.frombuffer(buffer, dtype=kind, count=count, offset=offset).reshape(shape)
