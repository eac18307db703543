"""Datasets by name on a fresh install: TFDS's own code path imports, and an unprepared dataset
without network fails at once with one line (never a download, never minutes of retries)."""

import socket

import pytest
import tensorflow_datasets as tfds

from sbjax.data import cache, load, tfds_source


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def no_download(monkeypatch):
    """Any download TFDS would start fails the test."""

    def download_and_prepare(self, *args, **kwargs):
        pytest.fail(f"a download of {self.name} was attempted")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)


def test_the_real_tfds_builder_reads_its_download_addresses():
    # DatasetBuilder.code_path imports importlib_resources, which TFDS does not declare on Python 3.9+.
    builder = tfds.builder("cifar10")
    assert type(builder).code_path.name == "cifar.py"
    assert any("cifar-10" in url for url in type(builder).url_infos)


def test_a_dataset_by_name_loads_end_to_end_through_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        train = load("cifar10", "train", val_size=2, tfds_data_dir=tmp_path, verbose=False)
        test = load("mnist", "test", tfds_data_dir=tmp_path, verbose=False)
    assert train.images.shape == (10, 32, 32, 3) and train.num_classes == 10
    assert test.images.shape == (12, 28, 28, 1) and test.num_classes == 10


def test_an_unprepared_dataset_offline_fails_at_once_naming_where_to_put_it(tmp_path, monkeypatch, no_download):
    probed = []
    monkeypatch.setattr(tfds_source, "reachable", lambda urls, timeout=tfds_source.PROBE_TIMEOUT_S: probed.extend(urls))
    with pytest.raises(ValueError) as caught:
        load("cifar10", "test", tfds_data_dir=tmp_path, verbose=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "'cifar10' is not prepared" in message and str(tmp_path) in message and "--data-dir" in message
    assert "no network" in message and "www.cs.toronto.edu" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in probed
    assert not any(tmp_path.iterdir())  # nothing was downloaded nor prepared


def test_download_false_fails_without_probing_the_network(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(tfds_source, "reachable", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(ValueError, match=r"'mnist' is not prepared in .*; .*--data-dir"):
        load("mnist", "test", tfds_data_dir=tmp_path, download=False, verbose=False)


def test_with_network_the_download_goes_ahead(tmp_path, monkeypatch):
    calls = []

    def download_and_prepare(self, *args, **kwargs):
        calls.append(self.name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    monkeypatch.setattr(tfds_source, "reachable", lambda *a, **k: True)
    with pytest.raises(RuntimeError, match="stop here"):
        load("mnist", "test", tfds_data_dir=tmp_path, verbose=False)
    assert calls == ["mnist"]


def test_a_manual_dataset_is_prepared_from_its_files_without_probing_the_network(tmp_path, monkeypatch):
    calls = []

    def download_and_prepare(self, *args, **kwargs):
        calls.append(self.name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    monkeypatch.setattr(tfds_source, "reachable", lambda *a, **k: pytest.fail("probed the network"))
    (tmp_path / "downloads" / "manual").mkdir(parents=True)
    (tmp_path / "downloads" / "manual" / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(RuntimeError, match="stop here"):
        load("imagenet2012", "test", tfds_data_dir=tmp_path, verbose=False)
    assert calls == ["imagenet2012"]


def test_the_probe_answers_for_a_listening_and_a_closed_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert tfds_source.reachable([f"http://127.0.0.1:{port}/file.tar.gz"])
    assert not tfds_source.reachable([f"http://127.0.0.1:{port}/file.tar.gz"], timeout=1.0)
    assert not tfds_source.reachable([])
