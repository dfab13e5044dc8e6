#!/bin/bash
# Submit the study as a SLURM array (scripts/slurm/evaluate.sbatch) and a job that runs after all its tasks
# succeeded and builds the tables and figures from the shared --out (--aggregate-only). Same environment
# settings as evaluate.sbatch; sbatch options after the script name go to the array, e.g. --array=0-15.
#   MODELS="ResNet" DATA=/data/ILSVRC2012 IMAGES=1000 scripts/slurm/submit.sh --array=0-15
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
array=$(sbatch --parsable --export=ALL "$@" "$here/evaluate.sbatch")
echo "array job $array"
sbatch --dependency="afterok:${array%%;*}" --job-name=repro-tables --export=ALL --wrap \
    "python repro/evaluate.py --model ${MODELS:-ResNet ResNetDenoise ResNeXtDenoiseAll} ${DATA:+--data $DATA} \
     --images ${IMAGES:-100} --out ${OUT:-results/slurm} --engine ${ENGINE:-torch} ${EXTRA:-} --aggregate-only"
