#!/bin/bash
# Issue 21's heavy stages at 128 px in one lent-GPU call (H200; the device tool allows 10 min a
# command): recipes 1 (single) and 2 (multi) of the transformer and both ablations of recipe 2,
# all at once on the one GPU (the models are tiny: 4 processes keep it busier than one). Every
# stage stops at the deadline; pack_world_runs.py then exports each run under $OUT.
#   device run: command "BUDGET=520 bash experiments/gpu_world128.sh", carry [".whl"], timeout 600
#   (.whl: diffusers 0.42.1, ftfy, wcwidth, importlib_metadata wheels for CPython 3.12; device README)
# Local dry run: PY=.venv/bin/python OUT=/tmp/o CLIPS=24 STEPS=20 BUDGET=300 bash experiments/gpu_world128.sh
set -u
PY=${PY:-python3}
if [ -d .whl ]; then  # the device image lacks diffusers (and ftfy); carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3 HF_HUB_OFFLINE=1
R=${R:-/tmp/world128}; mkdir -p $R "$OUT"
START=$SECONDS; DEADLINE=$((START + ${BUDGET:-510}))
CLIPS=${CLIPS:-6000}; STEPS=${STEPS:-8000}; VAE=src/magref/assets/models/miniature/vae
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || exit 1
left() { echo $((DEADLINE - SECONDS)); }
M="$PY -m magref.cli world"
train() {  # name, extra args
  local name=$1; shift
  timeout $(( $(left) - 25 )) $M train --out $R/$name --size 128 --vae $VAE --clips $CLIPS --dit-steps $STEPS --checkpoint-every 250 "$@" > $R/$name.log 2>&1
  echo "$name: rc $? at $((SECONDS - START)) s"
}
# the 128 px identity test ships (assets/world/identifier128, gate passed on 2026-11-28): ID_CLIPS=1500 trains another
[ "${ID_CLIPS:-0}" -gt 0 ] && { timeout $(( $(left) - 25 )) $M identifier --out $R/id128 --size 128 --clips $ID_CLIPS --steps ${ID_STEPS:-4000} > $R/id128.log 2>&1 & }
train single --recipe single &
train multi --recipe multi & MULTI=$!
# the ablations share recipe 2's clips and encodings: start them once its transformer trains
until [ -f $R/multi/dit/metrics.jsonl ] || [ $(left) -lt 60 ] || ! kill -0 $MULTI 2>/dev/null; do sleep 2; done
echo "multi encodings ready at $((SECONDS - START)) s"
train multi-nomask --recipe multi --ablation no-mask --reuse-from $R/multi &
train multi-tokens --recipe multi --ablation tokens --reuse-from $R/multi &
while [ -n "$(jobs -r)" ]; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; sleep 30; done
wait
[ -f $R/id128.log ] && echo "identifier: $(tail -c 300 $R/id128.log | tr '\r' '\n' | tail -2)"
$PY experiments/pack_world_runs.py $R "$OUT"  # here: python experiments/pack_world_runs.py --unpack FILES_AT MODELS
