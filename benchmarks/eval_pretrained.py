"""Top-1 of the ported CIFAR ResNets vs PyTorch on the CIFAR-10 JPEG test images.

Ports akamaster's pretrained ResNets with sbjax's torch-free reader, evaluates them with Flax
and, side by side, the same files with PyTorch (the reference model of tests/torch_reference.py),
using the normalization recorded in the manifest (ImageNet's constants, as they were trained).
Acceptance (issue 3): both top-1 agree within 0.2 points; about 81% for ResNet-20 on this lossy
JPEG copy (91.78% on the original pixels).

    .venv/bin/python benchmarks/eval_pretrained.py [--models resnet20 resnet56] [--limit N]
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tarfile
import time

import jax
import numpy as np
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch_reference  # noqa: E402
from sbjax import models, pretrained  # noqa: E402
from sbjax.models import porting, torchfile  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def decode_test_split(archive: pathlib.Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All ``test/<class>/*.jpg`` images as uint8 NHWC and their labels, in a fixed order."""
    images, labels = [], []
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/test/" in f"/{m.name}"), key=lambda m: m.name)
        for member in members:
            label = CLASSES.index(pathlib.PurePosixPath(member.name).parent.name)
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
    images, labels = np.stack(images), np.asarray(labels)
    if limit:
        keep = np.random.default_rng(0).permutation(len(labels))[:limit]
        images, labels = images[keep], labels[keep]
    return images, labels


def flax_logits(name: str, path: pathlib.Path, x: np.ndarray, batch: int) -> np.ndarray:
    state_dict = torchfile.load_state_dict(path)
    variables = porting.from_state_dict(state_dict, models.abstract_variables(name))
    model = models.create(name)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.concatenate([np.asarray(apply(variables, x[i : i + batch])) for i in range(0, len(x), batch)])


def torch_logits(name: str, path: pathlib.Path, x: np.ndarray, batch: int) -> np.ndarray:
    model = torch_reference.cifar_resnet(int(name.removeprefix("resnet")))
    state_dict = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()})
    model.eval()
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return np.concatenate([model(nchw[i : i + batch]).numpy() for i in range(0, len(x), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--weights", type=pathlib.Path, default=ROOT.parent / "shared/weights/cifar10-resnets")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="evaluate a fixed random subset")
    args = parser.parse_args()

    start = time.perf_counter()
    images, labels = decode_test_split(args.data, args.limit)
    print(f"decoded {len(labels)} test images in {time.perf_counter() - start:.1f} s")
    print(f"{'model':10s} {'flax top-1':>10s} {'torch top-1':>11s} {'diff':>6s} {'disagree':>8s} {'max|dlogit|':>11s}")
    for name in args.models:
        entry = pretrained.lookup(name)
        path = args.weights / entry.filename
        if pretrained.sha256_file(path) != entry.sha256:
            raise SystemExit(f"{path}: sha256 differs from the manifest")
        mean, std = np.asarray(entry.mean, np.float32), np.asarray(entry.std, np.float32)
        x = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
        ours, theirs = flax_logits(name, path, x, args.batch), torch_logits(name, path, x, args.batch)
        top1_ours = 100.0 * np.mean(ours.argmax(1) == labels)
        top1_theirs = 100.0 * np.mean(theirs.argmax(1) == labels)
        disagree = int(np.sum(ours.argmax(1) != theirs.argmax(1)))
        print(f"{name:10s} {top1_ours:10.2f} {top1_theirs:11.2f} {top1_ours - top1_theirs:6.2f} "
              f"{disagree:8d} {np.abs(ours - theirs).max():11.2e}")


if __name__ == "__main__":
    main()
