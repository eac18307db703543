"""SHELL: the process settings that make JAX on CPU fast, applied by the ``sbjax`` command.

BENCHMARKS.md measured a CPU training step 1.7x faster with glibc's allocator tuned through
``GLIBC_TUNABLES`` (one arena, no ``mmap``, no trimming) and XLA's YNNPACK convolution fusion
off (one ``XLA_FLAGS`` flag). glibc reads its tunables when a process starts, so the command
re-executes itself once with them set (:func:`apply`), before JAX creates its backend. It does so
only on CPU and only for settings the user has not made:

* "on CPU" is decided without importing JAX: ``JAX_PLATFORMS`` names only ``cpu``, or it is
  unset and no GPU or TPU plugin of JAX is installed (:func:`accelerator_installed`);
* a ``GLIBC_TUNABLES`` the user set is kept as is; the XLA flag is added to the user's
  ``XLA_FLAGS`` unless they already set it, and only for jaxlib releases that know it;
* :data:`MARKER` in the environment (set by the re-execution, or by a user who wants the
  process left alone, e.g. ``SBJAX_CPU_SETTINGS=off``) stops any change, so there is no loop.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping, Sequence

__all__ = ["MARKER", "TUNED_MALLOC", "TUNED_XLA_FLAG", "accelerator_installed", "apply", "changes", "on_cpu"]

MARKER = "SBJAX_CPU_SETTINGS"
TUNED_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
TUNED_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
XLA_FLAG_SINCE = (0, 10)  # the jaxlib release the flag was measured with; older ones may not know it
_ACCELERATOR_MODULES = ("libtpu",)  # TPU support ships as its own package


def accelerator_installed() -> bool:
    """Whether a GPU or TPU backend of JAX is installed (a ``jax_plugins`` plugin, or libtpu)."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations and any(
        pkgutil.iter_modules(spec.submodule_search_locations)
    ):
        return True
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES)


def on_cpu(environ: Mapping[str, str], accelerator: bool) -> bool:
    """Whether JAX runs on CPU: ``JAX_PLATFORMS`` lists only ``cpu``, or is unset and no accelerator is installed."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    return platforms == ["cpu"] * len(platforms) if platforms else not accelerator


def _jaxlib_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def changes(environ: Mapping[str, str], accelerator: bool, jaxlib: tuple[int, ...]) -> dict[str, str]:
    """The environment variables to set for the CPU settings; empty when nothing is to change.

    Args:
        environ: the process's environment (``os.environ``).
        accelerator: whether a GPU or TPU backend is installed (:func:`accelerator_installed`).
        jaxlib: jaxlib's ``(major, minor)`` release.

    >>> changes({"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "mine"}, False, (0, 10))
    {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution', 'SBJAX_CPU_SETTINGS': 'applied'}
    >>> changes({MARKER: "off"}, False, (0, 10))
    {}
    """
    if MARKER in environ or not on_cpu(environ, accelerator):
        return {}
    out = {}
    if "GLIBC_TUNABLES" not in environ:
        out["GLIBC_TUNABLES"] = TUNED_MALLOC
    user_flags = environ.get("XLA_FLAGS", "")
    flag_name = TUNED_XLA_FLAG.split("=")[0]
    if jaxlib >= XLA_FLAG_SINCE and flag_name not in user_flags:
        out["XLA_FLAGS"] = f"{user_flags} {TUNED_XLA_FLAG}".strip()
    return {**out, MARKER: "applied"} if out else {}


def apply(argv: Sequence[str] | None = None) -> None:
    """Re-executes this process with the CPU settings when :func:`changes` has any; else returns.

    ``argv`` is the interpreter's full command line (default ``sys.orig_argv``), rerun as is.
    """
    if MARKER in os.environ:  # the cheap test first: already applied, or left alone on purpose
        return
    updates = changes(os.environ, accelerator_installed(), _jaxlib_version())
    if updates:
        argv = list(sys.orig_argv if argv is None else argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **updates})
