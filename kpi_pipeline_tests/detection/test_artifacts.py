import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from kpi_pipeline.detection.artifacts import (
    FORMAT_VERSION,
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
    document, _ = read_document(pack("thing", STATE), "thing")
    assert document["format_version"] == FORMAT_VERSION
    assert document["libraries"] == library_versions()
    assert set(document["libraries"]) == {"numpy", "scikit-learn", "prophet"}
    assert all(document["libraries"].values())


def test_a_pickle_is_refused_with_what_to_do():
    with pytest.raises(UnreadableArtifact, match="pickle.*migrate.*retrain"):
        unpack(pickle.dumps({"a": 1}), "iforest")


def test_another_kind_or_a_newer_format_is_refused():
    with pytest.raises(UnreadableArtifact, match="expected a prophet model"):
        unpack(pack("iforest", {}), "prophet")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "state.json",
            json.dumps(
                {
                    "format": "kpi-pipeline model",
                    "format_version": FORMAT_VERSION + 1,
                    "kind": "thing",
                    "libraries": {},
                    "state": {},
                }
            ),
        )
    with pytest.raises(UnreadableArtifact, match="newer kpi-pipeline"):
        unpack(buffer.getvalue(), "thing")
    with pytest.raises(UnreadableArtifact, match="not a kpi-pipeline model"):
        unpack(b"junk", "thing")


def test_object_arrays_are_not_stored():
    with pytest.raises(TypeError, match="pickle"):
        pack("thing", {"bad": np.array([object()])})
