import io
import json
import pickle
import zipfile
import zlib

import numpy as np
import pytest

from kpi_pipeline.detection.artifacts import (
    FORMAT_VERSION,
    MAGIC,
    UnreadableArtifact,
    library_versions,
    pack,
    read_document,
    unpack,
)

STATE = {
    "scale": 0.1 + 0.2,  # not representable in few digits: read back to the same bits
    "tiny": 5e-324,
    "flags": [True, None, "text"],
    "nested": {"values": np.arange(5, dtype=np.int16), "blob": b"\x00\x01\xff"},
    "matrix": np.linspace(0, 1, 12).reshape(3, 4),
}


def test_a_state_reads_back_exactly():
    got = unpack(pack("thing", STATE), "thing")
    assert got["scale"] == STATE["scale"] and got["tiny"] == 5e-324
    assert got["flags"] == [True, None, "text"]
    values = got["nested"]["values"]
    assert values.dtype == np.int16 and values.tolist() == [0, 1, 2, 3, 4]
    assert bytes(got["nested"]["blob"]) == b"\x00\x01\xff"
    np.testing.assert_array_equal(got["matrix"], STATE["matrix"])


def test_the_same_state_packs_to_the_same_bytes():
    assert pack("thing", STATE) == pack("thing", STATE)


def test_an_artifact_records_its_format_and_the_libraries_that_made_it():
    document = read_document(pack("thing", STATE), "thing")
    assert document["format_version"] == FORMAT_VERSION
    assert document["libraries"] == library_versions()
    assert set(document["libraries"]) == {"numpy", "scikit-learn", "prophet"}
    assert all(document["libraries"].values())


def test_a_pickle_is_refused_with_what_to_do():
    with pytest.raises(UnreadableArtifact, match="pickle.*migrate.*retrain"):
        unpack(pickle.dumps({"a": 1}), "iforest")


def _document(kind: str = "thing", version: int = FORMAT_VERSION, state: dict | None = None) -> dict:
    state = state or {}
    return {"format": "kpi-pipeline model", "format_version": version, "kind": kind, "libraries": {}, "state": state}


def _container(document: dict, body: bytes = b"", blobs: bytes = b"") -> bytes:
    """A format version 3 artifact of ``document``, ``body`` and ``blobs`` as they are."""
    parts = [zlib.compress(json.dumps(document).encode()), zlib.compress(body), blobs]
    return MAGIC + b"".join(len(part).to_bytes(4, "little") + part for part in parts)


def _zip(document: dict, members: dict[str, bytes] | None = None) -> bytes:
    """A format version 1 or 2 artifact (a zip) of ``document`` and ``.npy`` members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("state.json", json.dumps(document))
        for name, data in (members or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    """A ``.npy`` member as version 2 wrote it (C order)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def as_version_2(data: bytes, kind: str) -> bytes:
    """An artifact rewritten as format version 2 wrote it: a zip of ``state.json`` and ``.npy``
    members (C order), each array named with its dtype and shape, byte strings as uint8."""
    members: dict[str, bytes] = {}

    def encode(value):
        if isinstance(value, dict):
            return {key: encode(item) for key, item in value.items()}
        if isinstance(value, list):
            return [encode(item) for item in value]
        if isinstance(value, np.ndarray):
            name = f"a{len(members)}"
            members[f"{name}.npy"] = _npy(value)
            return {"array": name, "dtype": value.dtype.str, "shape": list(value.shape)}
        return value

    document = {**read_document(data, kind), "format_version": 2}
    document["state"] = encode(unpack(data, kind))
    return _zip(document, members)


def test_another_kind_or_a_newer_format_is_refused():
    with pytest.raises(UnreadableArtifact, match="expected a prophet model"):
        unpack(pack("iforest", {}), "prophet")
    with pytest.raises(UnreadableArtifact, match="newer kpi-pipeline"):
        unpack(_container(_document(version=FORMAT_VERSION + 1)), "thing")
    # Which entries are arrays depends on the version, so a version its container cannot
    # hold (or none) is damage, not a version to read by the wrong rule.
    for wrong in (
        _container(_document(version=2)),
        _zip(_document(version=3)),
        _container({**_document(), "format_version": "3"}),
    ):
        with pytest.raises(UnreadableArtifact, match="damaged"):
            unpack(wrong, "thing")
    with pytest.raises(UnreadableArtifact, match="not a kpi-pipeline model"):
        unpack(b"junk", "thing")


def test_a_damaged_artifact_is_refused():
    data = pack("thing", STATE)
    for damaged in (data[:-1], data[:12], data[:30] + b"x" + data[31:]):
        with pytest.raises(UnreadableArtifact, match="damaged|shorter"):
            unpack(damaged, "thing")


def test_a_damaged_byte_string_is_refused():
    blob = bytes(range(256)) * 4
    data = bytearray(pack("thing", {"blob": blob}))
    data[data.index(blob) + 100] ^= 1
    with pytest.raises(UnreadableArtifact, match="damaged"):
        unpack(bytes(data), "thing")


def test_the_document_reads_alone_and_byte_strings_are_kept_as_they_are():
    blob = bytes(range(256)) * 40
    data = pack("thing", {"blob": blob, "n": 3})
    assert blob in data  # not compressed again
    assert read_document(data, "thing")["state"]["n"] == 3
    assert bytes(unpack(data, "thing")["blob"]) == blob


def test_object_arrays_are_not_stored():
    with pytest.raises(TypeError, match="pickle"):
        pack("thing", {"bad": np.array([object()])})


def _version_1(state: dict) -> bytes:
    """``state`` (arrays at its top level) as format version 1 wrote it: each array replaced by
    ``{"array": name}`` alone, its dtype and shape only in the ``.npy`` header."""
    arrays = {f"a{i}": value for i, value in enumerate(v for v in state.values() if isinstance(v, np.ndarray))}
    names = iter(arrays)
    document = {
        "format": "kpi-pipeline model",
        "format_version": 1,
        "kind": "thing",
        "libraries": {},
        "state": {key: {"array": next(names)} if isinstance(v, np.ndarray) else v for key, v in state.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("state.json", json.dumps(document))
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def test_an_artifact_of_format_version_1_still_reads():
    state = {"matrix": np.linspace(0, 1, 12).reshape(3, 4), "count": 3, "ints": np.arange(4, dtype=">i4")}
    got = unpack(_version_1(state), "thing")
    assert got["count"] == 3
    np.testing.assert_array_equal(got["matrix"], state["matrix"])
    assert got["ints"].dtype == np.dtype(">i4") and got["ints"].tolist() == [0, 1, 2, 3]


ARRAYS = {
    "matrix": np.linspace(0, 1, 12).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # stored in C order
    "empty": np.zeros((0, 3)),
    "scalar": np.array(2.5),
    "big_endian": np.arange(3, dtype=">f8"),
    "bools": np.array([True, False]),
    "bytes": np.arange(5, dtype=np.uint8),
}


def test_arrays_read_back_with_their_dtype_and_shape_aligned_and_writable():
    data = pack("thing", ARRAYS)
    got = unpack(data, "thing")
    document = read_document(data, "thing")
    for key, value in ARRAYS.items():
        member = document["state"][key]
        assert member["dtype"] == value.dtype.str and member["shape"] == list(value.shape)
        assert member["offset"] % 8 == 0
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)
    got["matrix"][0, 0] = 7.0  # as an array np.load returns


def test_an_artifact_of_format_version_2_still_reads_as_numpy_reads_its_members():
    names = {key: f"a{i}" for i, key in enumerate(ARRAYS)}
    state = {key: {"array": names[key], "dtype": v.dtype.str, "shape": list(v.shape)} for key, v in ARRAYS.items()}
    data = _zip(_document(version=2, state=state), {f"{names[key]}.npy": _npy(value) for key, value in ARRAYS.items()})
    got = unpack(data, "thing")
    for key, value in ARRAYS.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)
    got["matrix"][0, 0] = 7.0


def test_an_array_shorter_than_its_description_or_of_objects_is_refused():
    body = np.arange(3.0).tobytes()
    for wrong in ({"dtype": "<f8", "shape": [1000]}, {"dtype": "|O", "shape": [3]}, {"dtype": "<f8", "shape": [3]}):
        array = {"offset": 8 if wrong["shape"] == [3] and wrong["dtype"] == "<f8" else 0, **wrong}
        with pytest.raises(UnreadableArtifact, match="shorter|objects"):
            unpack(_container(_document(state={"values": array}), body), "thing")
    with pytest.raises(UnreadableArtifact, match="shorter"):
        unpack(_container(_document(state={"blob": {"blob": 2, "size": 9, "crc32": 0}}), blobs=b"12345"), "thing")
