"""SHELL: a sweep spread over many processes, GPUs and machines.

* :mod:`sbjax.launch.shard`: a deterministic 1/N of a sweep (``sbjax run --shard I/N``), for
  SLURM job arrays and other schedulers that start N independent processes.
* :mod:`sbjax.launch.ray_sweep`: a sweep whose jobs are Ray tasks (``sbjax run --ray``); needs
  the optional extra ``sbjax[ray]``.
"""
