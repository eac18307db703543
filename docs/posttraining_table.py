"""Prints the table of docs/posttraining.md: perplexity of a small GPT-2 pruned after training.

    .venv/bin/python docs/posttraining_table.py --out /tmp/posttraining

Trains a GPT-2-architecture model (``sbjax.models.GPT2``, sizes in ``CONFIG``) on the Python
standard library's top-level modules (``/usr/lib/python3.X/*.py`` by default, or ``--text``),
byte-tokenized, for ``--steps`` AdamW steps (the weights are saved under ``--out`` and reused on
the next run), then prunes it with no finetuning: magnitude (``layer_magnitude``,
``nm_magnitude``), Wanda and SparseGPT at 50% unstructured and 2:4, the last two with three
calibration seeds, and prints the test perplexity (strided protocol, ``--max-length``,
``--stride``) of each as a Markdown table, with every experiment's id.
"""

from __future__ import annotations

import argparse
import glob
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sbjax import language, perplexity
from sbjax.data import text as text_lib
from sbjax.models import GPT2, GPT2Config
from sbjax.selection import Selection

CONFIG = GPT2Config(vocab_size=256, n_positions=128, n_embd=96, n_layer=4, n_head=4, dropout=0.0)
SELECTION = Selection(kinds=("kernel",), classifier=None)  # kernels only, as in the papers; the tied head is an embedding
ROWS = (("none", None, 1), ("layer_magnitude", None, 1), ("wanda", None, 3), ("sparsegpt", None, 3),
        ("nm_magnitude", "2:4", 1), ("nm_wanda", "2:4", 3), ("nm_sparsegpt", "2:4", 3))  # fmt: skip
MODEL = GPT2(CONFIG)


def apply(params, ids):
    return MODEL.apply({"params": params}, ids)


def _default_text() -> str:
    folders = sorted(glob.glob(f"/usr/lib/python3.{sys.version_info.minor}")) or sorted(glob.glob("/usr/lib/python3.*"))
    return f"local:{folders[0]}"


def train(tokens: np.ndarray, steps: int, batch: int, seed: int, log) -> dict:
    """AdamW (lr 3e-3, cosine to 0 after 100 warm-up steps) on random windows of ``n_positions`` tokens."""
    params = MODEL.init(jax.random.key(seed), jnp.zeros((1, CONFIG.n_positions), jnp.int32))["params"]
    lr = optax.warmup_cosine_decay_schedule(0.0, 3e-3, min(100, steps // 2), steps)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.1))
    state = tx.init(params)
    length = CONFIG.n_positions + 1

    @jax.jit
    def step(params, state, ids):
        def loss(p):
            logits = apply(p, ids[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(steps):
        starts = rng.integers(0, len(tokens) - length, batch)
        ids = jnp.asarray(np.stack([tokens[s : s + length] for s in starts]))
        params, state, value = step(params, state, ids)
        if i % 200 == 0 or i == steps - 1:
            log(f"step {i}: loss {float(value):.3f} ({time.perf_counter() - start:.0f} s)")
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=None, help="text source (default: local:/usr/lib/python3.X, *.py, top level)")
    parser.add_argument("--out", default="/tmp/sbjax-posttraining", help="folder for the weights and the rows")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--test-tokens", type=int, default=65536, help="score the first N tokens of the test split")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--samples", type=int, default=128, help="calibration sequences")
    parser.add_argument("--length", type=int, default=128, help="calibration sequence length")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    source = args.text or _default_text()
    text = text_lib.load_text(source, suffix=".py", recursive=False)
    tokens = text_lib.encode(text, text_lib.tokenizer("bytes"))
    train_tokens, test_tokens = text_lib.split_tokens(tokens, (0.9, 0.1))
    test_tokens = test_tokens[: args.test_tokens]
    log(f"{source}: {len(text):,} characters, {len(tokens):,} byte tokens; train {len(train_tokens):,}, "
        f"test {len(test_tokens):,} scored")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"gpt2-{text_lib.text_fingerprint(text)}-{args.steps}.pkl"
    if weights.exists():
        params = pickle.loads(weights.read_bytes())
    else:
        params = train(train_tokens, args.steps, args.batch, 0, log)
        weights.write_bytes(pickle.dumps(jax.device_get(params)))
    protocol = perplexity.Protocol(args.max_length, args.stride)
    rows = []
    for strategy, nm, seeds in ROWS:
        values = []
        for seed in range(seeds):
            experiment = language.LMExperiment(
                text=source, text_fingerprint=text_lib.text_fingerprint(text), tokenizer="bytes",
                model=f"gpt2(n_embd={CONFIG.n_embd},n_layer={CONFIG.n_layer},n_head={CONFIG.n_head})",
                weights=language.params_fingerprint(params), strategy=strategy, fraction=0.5 if strategy != "none" else 1.0,
                nm=None, calibration=language.Calibration("train", args.samples, args.length, seed), protocol=protocol,
            )  # fmt: skip
            row = language.run_lm_experiment(experiment, apply, params, train_tokens, test_tokens, selection=SELECTION)
            rows.append(row)
            values.append(row["perplexity"])
            log(f"{strategy} seed {seed}: {row['perplexity']:.4f} ({row['prune_seconds']:.1f} s) {row['id']}")
        mean = statistics.mean(values)
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        pattern = "dense" if strategy == "none" else ("2:4" if nm or strategy.startswith("nm_") else "50%")
        print(f"| {strategy} | {pattern} | {mean:.3f}{spread} | {len(values)} | "
              f"{', '.join(f'{v:.3f}' for v in values)} | {rows[-1]['prune_seconds']:.1f} |", flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
