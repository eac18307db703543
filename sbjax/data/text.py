"""Token datasets for language models: local text files or a Hugging Face dataset, and tokenizers.

A text source is named by a string that results carry:

* ``"local:PATH"``: a text file, or a folder whose files ending in ``suffix`` (``.txt`` by
  default; ``.py`` for source code) are read in sorted path order and joined with blank lines;
* ``"wikitext-2-raw-v1"`` / ``"wikitext-103-raw-v1"``: the Hugging Face dataset ``wikitext`` in
  that configuration, its rows joined with ``"\\n\\n"`` as in Hugging Face's perplexity guide (needs
  the optional ``datasets`` package; it downloads on first use).

A tokenizer is named too: ``"bytes"`` (UTF-8 bytes, 256 tokens, no dependency) or the name of a
Hugging Face tokenizer such as ``"gpt2"`` (GPT-2's byte-level BPE, through ``transformers``,
downloaded on first use). :func:`text_fingerprint` digests the text, so a result id changes when
the text does.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["HF_TEXT", "Tokenizer", "encode", "load_text", "split_tokens", "text_fingerprint", "tokenizer"]

#: Hugging Face text datasets known by name: (dataset, configuration).
HF_TEXT = {"wikitext-2-raw-v1": ("wikitext", "wikitext-2-raw-v1"), "wikitext-103-raw-v1": ("wikitext", "wikitext-103-raw-v1")}


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A named tokenizer: ``encode(text) -> int32 ids`` and its vocabulary size."""

    name: str
    vocab_size: int
    encode: Callable[[str], np.ndarray] = dataclasses.field(compare=False, repr=False)


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def tokenizer(name: str = "bytes") -> Tokenizer:
    """The tokenizer called ``name``: ``"bytes"`` or a Hugging Face tokenizer name (``"gpt2"``).

    >>> tokenizer("bytes").encode("hé").tolist()
    [104, 195, 169]
    """
    if name == "bytes":
        return Tokenizer("bytes", 256, _bytes)
    try:
        import transformers
    except ImportError:
        raise ValueError(f"tokenizer {name!r} needs the transformers package (pip install transformers); "
                         "or use the 'bytes' tokenizer") from None  # fmt: skip
    try:
        hf = transformers.AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise ValueError(f"cannot load tokenizer {name!r} ({' '.join(str(error).split())[:200]}); "
                         "offline, use a local tokenizer folder or 'bytes'") from None  # fmt: skip
    encode = lambda text: np.asarray(hf(text, return_attention_mask=False)["input_ids"], np.int32)  # noqa: E731
    return Tokenizer(name, len(hf), encode)


def _local(path: Path, suffix: str, recursive: bool) -> str:
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if not path.is_dir():
        raise ValueError(f"text source {str(path)!r} is neither a file nor a folder")
    files = sorted(p for p in (path.rglob if recursive else path.glob)(f"*{suffix}") if p.is_file())
    if not files:
        raise ValueError(f"text folder {str(path)!r} has no files ending in {suffix!r}")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def load_text(source: str, split: str = "test", *, suffix: str = ".txt", recursive: bool = True) -> str:
    """The text of ``source`` (see the module docstring); ``split`` applies to Hugging Face datasets.

    A local folder is read with its subfolders unless ``recursive`` is False.

    Raises:
        ValueError: an unknown source, a missing file, or ``datasets`` not installed.
    """
    if source.startswith("local:"):
        return _local(Path(source[len("local:"):]).expanduser(), suffix, recursive)
    if source in HF_TEXT:
        try:
            import datasets
        except ImportError:
            raise ValueError(f"text source {source!r} needs the datasets package (pip install datasets)") from None
        rows = datasets.load_dataset(*HF_TEXT[source], split=split)["text"]
        return "\n\n".join(rows)
    raise ValueError(f"unknown text source {source!r}; expected 'local:PATH' or one of {', '.join(HF_TEXT)}")


def text_fingerprint(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of the text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def encode(text: str, tok: Tokenizer) -> np.ndarray:
    """The int32 token ids of ``text``."""
    return np.asarray(tok.encode(text), np.int32)


def split_tokens(tokens: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Consecutive pieces of ``tokens`` with these fractions of its length (the last takes the rest).

    >>> [p.tolist() for p in split_tokens(np.arange(10), (0.8, 0.2))]
    [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]]
    """
    bounds = [0, *np.cumsum([round(f * len(tokens)) for f in fractions[:-1]]).tolist(), len(tokens)]
    return [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
