#!/bin/bash
#SBATCH --job-name=sbjax-sweep
#SBATCH --array=0-7
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail
sbjax run --config my_sweep.json --results results/my_sweep \
  --shard "$((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT"
