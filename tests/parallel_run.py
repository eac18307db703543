"""Data-parallel train and eval steps on N simulated CPU devices, written to an ``.npz`` file.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python parallel_run.py OUT.npz

For each run (``plain``: no mesh; ``mesh1``: a mesh of one device; ``meshN``: a mesh of every
device) it saves the losses of three masked SGD steps, the final params and batch statistics,
the eval sums of a padded batch, and how the arrays were placed; then, without a mesh and on
every device, the params and eval sums of two stacked models after two steps, and the history
and the selected variables of a short finetuning run; and a finetuning run on a streamed folder,
without a mesh (every device) and on a mesh of 2 of the devices.
"""

import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from finetune_run import split, train_transform, transform
from sbjax import parallel, stacked, strategies, train
from sbjax.finetune import finetune
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import TinyNet, batches, make_tiny


def flat(prefix, tree):
    return {f"{prefix}/{jax.tree_util.keystr(p)}": np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def run(mesh, model, variables, mask, data):
    tx = optax.sgd(0.1, momentum=0.9)
    step = train.make_train_step(train.make_loss_fn(model), tx, mesh=mesh)
    eval_step = train.make_eval_step(train.make_predict_fn(model), mesh=mesh)
    state = train.init_state(variables["params"], variables["batch_stats"], mask, tx)
    out, losses = {}, []
    for i, (x, y) in enumerate(data):
        if mesh is not None:
            x, y = parallel.shard_batch((x, y), mesh)
            out["per_device_rows"] = np.asarray(x.addressable_shards[0].data.shape[0])
        state, metrics = step(state, x, y, jax.random.key(i))
        losses.append(metrics["loss"])
    x, y = data[0]
    valid = jnp.arange(8) < 5
    sums = eval_step(state.params, state.batch_stats, x, y, valid)
    out["losses"] = np.asarray(losses)
    out["state_devices"] = np.asarray(len(jax.tree.leaves(state.params)[0].sharding.device_set))
    out |= flat("params", state.params) | flat("stats", state.batch_stats)
    out |= {f"eval/{k}": np.asarray(v) for k, v in sums.items()}
    return out


def stacked_run(mesh, model, variables, mask, data):
    """Two models stacked (sequential execution), two steps on their own batches, then eval sums."""
    tx = optax.sgd(0.1, momentum=0.9)
    step = stacked.make_stacked_step(train.make_loss_fn(model), tx, "sequential", data_mesh=mesh)
    eval_step = stacked.make_stacked_eval_step(train.make_predict_fn(model), "sequential", data_mesh=mesh)
    one = train.init_state(variables["params"], variables["batch_stats"], mask, tx)
    state = stacked.stack([one, one])
    for i in range(2):
        x, y = (jnp.stack(parts) for parts in zip(data[i], data[i + 1]))
        state, _ = step(state, x, y, jax.random.split(jax.random.key(i), 2))
    x, y = data[0]
    sums = eval_step(state.params, state.batch_stats, x, y, jnp.arange(8) < 6)
    return flat("params", state.params) | {f"eval/{k}": np.asarray(v) for k, v in sums.items()}


def finetuned(mesh) -> dict[str, np.ndarray]:
    """Two epochs of the finetuning loop (batch 16, validation on 40 examples) on ``mesh``."""
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = strategies.random(variables["params"], None, 0.5, key=jax.random.key(1))
    settings = FinetuneConfig(16, 2, OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True))
    result = finetune(model, variables, mask, split(1, 96), split(2, 40), settings, jax.random.key(7),
                      transform_train=train_transform, transform_eval=transform, mesh=mesh, log=lambda line: None)
    columns = ("train_loss", "val_loss", "val_top1")
    return {f"history/{k}": np.asarray([row[k] for row in result.history]) for k in columns} | flat("variables", result.variables)


def streamed(mesh, root) -> dict[str, np.ndarray]:
    """One epoch of the finetuning loop on a streamed folder of 48 tiny PNGs, batches over ``mesh``."""
    from PIL import Image

    from sbjax.data import make_transform, open_split

    rng = np.random.default_rng(0)
    for i in range(48):
        folder = root / "train" / "abcd"[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / f"{i:02d}.png").exists():
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    train_split, val_split = (open_split("folder", s, data_dir=root, val_size=12) for s in ("train", "validation"))
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = strategies.random(variables["params"], None, 0.5, key=jax.random.key(1))
    settings = FinetuneConfig(8, 1, OptimizerConfig("sgd", lr=0.05, momentum=0.9))
    result = finetune(model, variables, mask, train_split, val_split, settings, jax.random.key(3),
                      transform_train=make_transform("cifar", (0.5,) * 3, (0.25,) * 3, train=True),
                      transform_eval=make_transform("cifar", (0.5,) * 3, (0.25,) * 3, train=False), mesh=mesh,
                      log=lambda line: None)  # fmt: skip
    return {"val_loss": np.asarray(result.history[-1]["val_loss"])} | flat("variables", result.variables)


def main(path: str) -> None:
    model, variables, mask, _, _ = make_tiny()
    data = batches(3, seed=5)
    runs = {"plain": None, "mesh1": parallel.data_mesh(jax.devices()[:1]), "meshN": parallel.data_mesh(jax.devices())}
    saved = {"devices": np.asarray(jax.device_count())}
    for name, mesh in runs.items():
        saved |= {f"{name}:{k}": v for k, v in run(mesh, model, variables, mask, data).items()}
    for name, mesh in (("plain", None), ("meshN", runs["meshN"])):
        saved |= {f"{name}:stacked/{k}": v for k, v in stacked_run(mesh, model, variables, mask, data).items()}
        saved |= {f"{name}:finetune/{k}": v for k, v in finetuned(mesh).items()}
    with tempfile.TemporaryDirectory() as root:  # streamed batches over all devices, and over a part of them
        for name, mesh in (("plain", None), ("mesh2", parallel.data_mesh(jax.devices()[:2]))):
            saved |= {f"{name}:streamed/{k}": v for k, v in streamed(mesh, Path(root)).items()}
    tx = optax.sgd(0.1)
    step = train.make_train_step(train.make_loss_fn(model), tx, mesh=runs["meshN"])
    state = train.init_state(variables["params"], variables["batch_stats"], mask, tx)
    try:
        step(state, *batches(1, 0, (6, 8, 8, 3))[0])  # 6 rows over 4 devices
    except ValueError as error:
        saved["uneven_error"] = np.asarray(str(error))
    np.savez(path, **saved)


if __name__ == "__main__":
    main(sys.argv[1])
