#!/bin/bash
# Issue 21's heavy stages at 128 px in one lent-GPU call (H200; the device tool allows 10 min a
# command). Measured on one (2026-11-28): a single process encodes ~11 clips/s (three 13-frame VAE
# encodes and two CLIP encodes a clip, launch-bound: four processes ran at ~10 clips/s each) and
# trains ~18 steps/s at batch 8; 6000 clips a recipe left no time to train. So the clips are
# written first (--data-only), their encoding cache is built by ENCODERS processes per recipe
# (torchrun ... magref encode), and only then do the transformers train, until the deadline.
#   device run: command "BUDGET=520 bash experiments/gpu_world128.sh", carry [".whl"], timeout 600
#   (.whl: diffusers 0.42.1, ftfy, wcwidth, importlib_metadata wheels for CPython 3.12; device README)
# RECIPES: the runs to train (default multi: recipe 1 trains on the CPU, ~/.cache/magref/w128-dit.sh);
# ABLATIONS=1 adds both ablations of recipe 2 on its clips once its cache is built (the
# tokens ablation reads that cache; the no-mask one builds its own condition cache).
# Local dry run: PY=.venv/bin/python OUT=/tmp/o CLIPS=8 STEPS=4 BUDGET=300 ENCODERS=2 ABLATIONS=1 bash experiments/gpu_world128.sh
set -u
PY=${PY:-python3}
if [ -d .whl ]; then  # the device image lacks diffusers (and ftfy); carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1
R=${R:-/tmp/world128}; mkdir -p $R "$OUT"
START=$SECONDS; DEADLINE=$((START + ${BUDGET:-510}))
CLIPS=${CLIPS:-4000}; STEPS=${STEPS:-8000}; ENCODERS=${ENCODERS:-6}; RECIPES=${RECIPES:-multi}
VAE=src/magref/assets/models/miniature/vae
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || exit 1
left() { echo $((DEADLINE - SECONDS)); }
M="$PY -m magref.cli world"
stamp() { echo "$1 at $((SECONDS - START)) s"; }
train() {  # name, extra args; resumes (and then trains) a run whose cache is built
  local name=$1; shift
  timeout $(( $(left) - 25 )) $M train --out $R/$name --size 128 --vae $VAE --clips $CLIPS --dit-steps $STEPS --checkpoint-every 250 "$@" >> $R/$name.log 2>&1
  stamp "$name: rc $?"
}
encode() {  # name: its cache built by ENCODERS processes (each its share of the parts)
  timeout $(( $(left) - 60 )) $PY -m torch.distributed.run --standalone --nproc_per_node $ENCODERS -m magref.cli encode $R/$1/dit.yaml >> $R/$1.log 2>&1
  stamp "$1 encoded: rc $?"; touch $R/$1.encoded
}
for name in $RECIPES; do
  ( $M train --out $R/$name --size 128 --vae $VAE --clips $CLIPS --dit-steps $STEPS --recipe $name --data-only > $R/$name.log 2>&1
    stamp "$name clips: rc $?"; encode $name; train $name --recipe $name ) &
done
if [ "${ABLATIONS:-0}" = 1 ]; then  # recipe 2's clips and cache (the no-mask condition has its own cache: its encode runs too)
  until [ -f $R/multi.encoded ] || [ $(left) -lt 60 ]; do sleep 2; done
  for ab in no-mask tokens; do
    ( $M train --out $R/multi-$ab --size 128 --vae $VAE --clips $CLIPS --dit-steps $STEPS --recipe multi --ablation $ab --reuse-from $R/multi --data-only > $R/multi-$ab.log 2>&1
      encode multi-$ab; train multi-$ab --recipe multi --ablation $ab --reuse-from $R/multi ) &
  done
fi
while [ -n "$(jobs -r)" ]; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; sleep 30; done
wait
for f in $R/*/dit/metrics.jsonl; do echo "$f: $(tail -1 $f)"; done
$PY experiments/pack_world_runs.py $R "$OUT"  # here: python experiments/pack_world_runs.py --unpack FILES_AT MODELS
