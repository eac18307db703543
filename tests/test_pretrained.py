"""The pretrained manifest and porting files into checkpoints (``sbjax port``)."""

import json
import pathlib

import numpy as np
import pytest
import torch
import torchvision

import torch_reference
from sbjax import checkpoints, cli, models, pretrained
from sbjax.models import porting

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "cifar10-resnets"
RESNET20 = WEIGHTS / "resnet20-12fca82f.th"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
needs_weights = pytest.mark.skipif(not RESNET20.exists(), reason="shared weights not present")


def test_manifest_entries_are_consistent():
    entries = pretrained.manifest()
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50", "vgg16_bn",
            "mobilenet_v2"} <= set(entries)
    for name, entry in entries.items():
        assert entry.model in models.names() and entry.num_classes == models.num_classes(entry.model)
        assert entry.url.startswith("https://") and entry.url.endswith("/" + entry.filename)
        assert entry.filename.split("-")[-1].split(".")[0] == entry.sha256_prefix
        assert entry.sha256 is None or entry.sha256.startswith(entry.sha256_prefix)
        assert (entry.mean, entry.std) == IMAGENET
    assert entries["resnet20"].top1 == 91.78 and entries["resnet18"].top1 == 69.758


def test_repository_manifest_is_the_package_manifest():
    assert (ROOT / "checkpoints" / "manifest.json").read_text() == (ROOT / "sbjax" / "pretrained.json").read_text()


@needs_weights
def test_manifest_hashes_match_the_shared_files():
    for path in sorted(WEIGHTS.glob("*.th")):
        entry = pretrained.lookup(path.name.split("-")[0])
        assert entry.filename == path.name and pretrained.sha256_file(path) == entry.sha256


@needs_weights
def test_port_resnet20_equals_torch_load(tmp_path):
    out, info = pretrained.port("resnet20", str(RESNET20), tmp_path / "r20")
    variables, restored_info = checkpoints.restore(out, model="resnet20")
    assert restored_info == info and info.normalization == IMAGENET and info.accuracy == 91.78
    assert info.source_sha256 == pretrained.lookup("resnet20").sha256 and info.source == str(RESNET20)
    reference = torch.load(RESNET20, map_location="cpu", weights_only=False)["state_dict"]
    expected = porting.from_state_dict(reference, models.abstract_variables("resnet20"))
    for a, b in zip(jax_leaves(expected), jax_leaves(variables)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@needs_weights
def test_wrong_file_for_a_known_name_is_refused(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="has sha256 12fca82f.* but resnet56"):
        pretrained.port("resnet56", str(RESNET20), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_torchvision_hash_prefix_is_checked(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(pretrained.PretrainedError, match="does not start with f37072fd"):
        pretrained.port("resnet18", str(path), tmp_path / "r18")


def test_own_weights_port_unverified_and_give_pytorch_logits(tmp_path):
    torch_model = torch_reference.randomize_batch_norm(torch_reference.cifar_resnet(20), (3, 32, 32))
    path = tmp_path / "mine.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch_model.state_dict().items()}}, path)
    # A manifest name checks the hash, so one's own file is refused...
    with pytest.raises(pretrained.PretrainedError, match="has sha256"):
        pretrained.port("resnet20", str(path), tmp_path / "ck")
    # ...unless it is declared as one's own weights: then nothing from the manifest is recorded.
    out, info = pretrained.port("resnet20", str(path), tmp_path / "ck", own_weights=True)
    assert info.model == "resnet20" and info.name is None and info.normalization is None and info.accuracy is None
    assert info.source_sha256 == pretrained.sha256_file(path)
    variables, _ = checkpoints.restore(out, model="resnet20")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    logits = models.create("resnet20").apply(variables, x.permute(0, 2, 3, 1).numpy())
    assert np.abs(np.asarray(logits) - expected).max() <= 1e-4


def test_models_without_an_entry_port_with_from(tmp_path):
    path = tmp_path / "mnist.pth"
    torch.save(torch_reference.MnistNet().state_dict(), path)
    out, info = pretrained.port("mnistnet", str(path), tmp_path / "m")
    assert checkpoints.read_info(out).model == "mnistnet" and info.name is None
    with pytest.raises(pretrained.PretrainedError, match="not in the pretrained manifest"):
        pretrained.port("mnistnet", None, tmp_path / "m2")


def test_download_failure_is_fast_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SBJAX_CACHE", str(tmp_path / "cache"))
    # Port 9 of 127.0.0.1 ("discard") refuses connections: offline, deterministically.
    with pytest.raises(pretrained.PretrainedError, match="could not download http://127.0.0.1:9/x.th .*--from PATH"):
        pretrained.port("resnet20", "http://127.0.0.1:9/x.th", tmp_path / "r20", timeout=2)


def test_cli_port(tmp_path, capsys):
    if not RESNET20.exists():
        pytest.skip("shared weights not present")
    out = tmp_path / "ck"
    assert cli.main(["port", "resnet20", "--from", str(RESNET20), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"saved to {out}" in printed and "verified against the manifest" in printed
    assert checkpoints.read_info(out).model == "resnet20"
    assert cli.main(["port", "resnet20", "--from", str(RESNET20), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["port", "resnet20", "--from", str(RESNET20), "--out", str(out), "--force"]) == 0


def test_cli_port_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["port", "nonesuch", "--from", "x.th", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbjax port: error: unknown name 'nonesuch'") and err.count("\n") == 1
    assert cli.main(["port", "resnet20", "--from", str(tmp_path / "missing.th"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a torch file")
    assert cli.main(["port", "mlp", "--from", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.th" in capsys.readouterr().err


CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_jpeg_test_subset(per_class):
    """The first ``per_class`` test images of each class, decoded with Pillow (uint8 NHWC)."""
    import io
    import tarfile

    from PIL import Image

    images, labels, counts = [], [], dict.fromkeys(CLASSES, 0)
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            parts = pathlib.PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) != 4 or parts[1] != "test" or counts[parts[2]] >= per_class:
                continue
            counts[parts[2]] += 1
            images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
            labels.append(CLASSES.index(parts[2]))
            if min(counts.values()) >= per_class:
                break
    return np.stack(images), np.asarray(labels)


@needs_weights
@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason="shared CIFAR-10 JPEG data not present")
def test_ported_resnet20_matches_pytorch_on_real_images(tmp_path):
    """Acceptance in small: the full 10,000-image run is benchmarks/eval_pretrained.py."""
    import jax

    images, labels = _cifar_jpeg_test_subset(per_class=50)
    out, info = pretrained.port("resnet20", str(RESNET20), tmp_path / "r20")
    variables, info = checkpoints.restore(out, model="resnet20")
    mean, std = (np.asarray(v, np.float32) for v in info.normalization)
    x = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    ours = np.asarray(jax.jit(models.create("resnet20").apply)(variables, x))
    torch_model = torch_reference.cifar_resnet(20)
    state_dict = torch.load(RESNET20, map_location="cpu", weights_only=False)["state_dict"]
    torch_model.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()})
    with torch.no_grad():
        theirs = torch_model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    accuracy = np.mean(ours.argmax(1) == labels)
    assert 0.70 <= accuracy <= 0.92  # about 81% on the whole lossy JPEG test split
