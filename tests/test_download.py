"""The real download path against a local HTTP server: success, corruption, 404, refused."""

import socket

import pytest

from metabench import MetabenchError
from metabench.data.download import fetch_file

EVALUATION_SHA256 = "sha256:5fa0db4e3c9b46bd52379081fd5a83fbcf5d767d8ab60a3678466fb5e86021b7"


def test_good_download_is_verified_and_stored(shared_data, http_server, tmp_path):
    url = http_server(shared_data / "omniglot") + "images_evaluation.zip"
    dest = fetch_file(url, tmp_path / "images_evaluation.zip", EVALUATION_SHA256)
    assert dest.stat().st_size == (shared_data / "omniglot" / "images_evaluation.zip").stat().st_size
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.fault
def test_checksum_mismatch_leaves_no_partial_file_and_keeps_existing(shared_data, http_server, tmp_path):
    url = http_server(shared_data / "omniglot") + "images_evaluation.zip"
    dest = tmp_path / "images_evaluation.zip"
    dest.write_bytes(b"previously stored file")
    with pytest.raises(MetabenchError, match="expected 68d2") as error:
        fetch_file(url, dest, "md5:68d2efa1b9178cc56df9314c21c6e718")
    assert "\n" not in str(error.value)
    assert dest.read_bytes() == b"previously stored file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_evaluation.zip"]


@pytest.mark.fault
def test_http_404_is_a_clear_error(http_server, tmp_path):
    (tmp_path / "served").mkdir()
    url = http_server(tmp_path / "served") + "missing.zip"
    with pytest.raises(MetabenchError, match="HTTP 404"):
        fetch_file(url, tmp_path / "out" / "missing.zip", "md5:00")
    assert not (tmp_path / "out" / "missing.zip").exists()


@pytest.mark.fault
def test_connection_refused_is_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MetabenchError, match="cannot reach"):
        fetch_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", "md5:00")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_local_path_source_and_missing_local_file(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")
    dest = fetch_file(str(source), tmp_path / "copy" / "a.bin", "md5:900150983cd24fb0d6963f7d28e17f72")
    assert dest.read_bytes() == b"abc"
    with pytest.raises(MetabenchError, match="does not exist"):
        fetch_file(str(tmp_path / "nope.zip"), tmp_path / "n.zip", "md5:00")


@pytest.mark.fault
def test_malformed_checksum_is_rejected(tmp_path):
    with pytest.raises(MetabenchError, match="md5:<hex>"):
        fetch_file(str(tmp_path), tmp_path / "x", "crc32:1234")


def test_progress_reports_bytes_against_the_total(shared_data, http_server, tmp_path):
    url = http_server(shared_data / "omniglot") + "images_evaluation.zip"
    size = (shared_data / "omniglot" / "images_evaluation.zip").stat().st_size
    seen = []
    fetch_file(url, tmp_path / "images_evaluation.zip", EVALUATION_SHA256, lambda *report: seen.append(report))
    assert {what for what, _, _ in seen} == {"download images_evaluation.zip (bytes)"}
    assert all(total == size for _, _, total in seen)  # the server's Content-Length: a bar with a total
    done = [count for _, count, _ in seen]
    assert done == sorted(done) and done[-1] == size
