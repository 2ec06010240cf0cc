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
# ABLATIONS=1 adds both ablations of recipe 2 once its cache is built: they read that cache (its
# key holds the clips, layouts and encoders, not the conditioning, which is applied at the input).
# INIT: transformer weights that start every run (e.g. the last GPU session's packed multi.safetensors,
# carried in .carry/), so short sessions add up; BATCH: the batch (default 8: ~20 steps/s, the GPU
# 15-20 % busy, launch-bound; a larger batch costs little more per step).
#   e.g. INIT=.carry/multi.safetensors BATCH=64 BUDGET=530 bash experiments/gpu_world128.sh, carry [".whl", ".carry"]
# WIDE: world train size options of a second recipe-2 run, multi-wide, trained from scratch beside the
#   first on its cache (the GPU idles at the small model), e.g. WIDE="--dit-layers 8 --dit-heads 6"
#   (20 M parameters, 41 MB in bf16: it comes back in parts; 8 x 8 heads, 72 MB, would not fit the 64 MiB)
# ENCODE_BATCH: clips per encoder call while the caches are built (default 16; processes time-slice
#   one GPU, so more ENCODERS stopped helping at ~40 clips/s in all; batching is the remedy, not yet timed)
# SOURCE_ORDER: the share of grid and random layouts whose regions keep the subjects' left-to-right
#   order (world train --source-order; default 1: with shuffled regions the multi-subject model
#   averaged its subjects, docs/miniature-world.md, eighth session; 0 is the method's shuffle)
# DIT: the transformer's size as `world train` options (default the shipped 6 layers x 4 heads),
#   e.g. DIT="--dit-layers 8 --dit-heads 8" (a wider model trains from scratch: no INIT)
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
CLIPS=${CLIPS:-4000}; STEPS=${STEPS:-8000}; ENCODERS=${ENCODERS:-8}; RECIPES=${RECIPES:-multi}; BATCH=${BATCH:-8}; ENCODE_BATCH=${ENCODE_BATCH:-16}
INIT_ARGS=(); [ -n "${INIT:-}" ] && INIT_ARGS=(--transformer-init "$INIT")
if [ -n "${WIDE:-}" ] && { [ "${ABLATIONS:-0}" = 1 ] || [ "$RECIPES" != multi ]; }; then
  echo "WIDE beside ABLATIONS=1 or another recipe: its 41 MB and the others' weights exceed the 64 MiB the device tool returns; run them apart" >&2; exit 2
fi
if [ -n "${INIT:-}" ] && [ "${ABLATIONS:-0}" = 1 ]; then echo "INIT and ABLATIONS=1: the ablations train from scratch with the recipe's budget; run them apart" >&2; exit 2; fi
VAE=src/magref/assets/models/miniature/vae
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || exit 1
left() { echo $((DEADLINE - SECONDS)); }
bounded() {  # margin, command...: runs it until `margin` s before the deadline (never unbounded: `timeout 0` is)
  local t=$(( $(left) - $1 )); shift
  [ $t -gt 0 ] || return 124
  timeout -k 10 $t "$@"
}
M="$PY -m magref.cli world"
stamp() { echo "$1 at $((SECONDS - START)) s"; }
world_train() {  # margin, name, extra args: `world train` of run `name` until `margin` s before the deadline
  local margin=$1 name=$2; shift 2
  bounded $margin $M train --out $R/$name --size 128 --vae $VAE --clips $CLIPS --dit-steps $STEPS --batch-size $BATCH --checkpoint-every 250 --encode-batch $ENCODE_BATCH --source-order ${SOURCE_ORDER:-1} ${INIT_ARGS[@]+"${INIT_ARGS[@]}"} ${DIT:-} "$@" >> $R/$name.log 2>&1
}
encode() {  # name: its cache built by ENCODERS processes (each its share of the parts)
  bounded 60 $PY -m torch.distributed.run --standalone --nproc_per_node $ENCODERS -m magref.cli encode $R/$1/dit.yaml >> $R/$1.log 2>&1
  local rc=$?; stamp "$1 encoded: rc $rc"; [ $rc = 0 ] && touch $R/$1.encoded
}
stages() {  # name, "encode" or "" (a run that reads another's cache), extra args: clips, cache, transformer
  local name=$1 own=$2; shift 2
  world_train 120 $name --data-only "$@"; local rc=$?; stamp "$name clips: rc $rc"; [ $rc = 0 ] || return $rc
  [ -n "$own" ] && encode $name  # a failed parallel encode leaves the missing parts to the training process (slower)
  world_train 25 $name "$@"; stamp "$name: rc $?"
}
rm -f $R/*.encoded $R/*.log  # a warm machine keeps /tmp
for name in $RECIPES; do
  stages $name encode --recipe $name &
done
if [ "${ABLATIONS:-0}" = 1 ] && [[ " $RECIPES " == *" multi "* ]]; then
  until [ -f $R/multi.encoded ] || [ $(left) -lt 90 ]; do sleep 2; done
  if [ -f $R/multi.encoded ]; then
    for ab in no-mask tokens; do
      stages multi-$ab "" --recipe multi --ablation $ab --reuse-from $R/multi &
    done
  fi
fi
if [ -n "${WIDE:-}" ] && [[ " $RECIPES " == *" multi "* ]]; then  # a larger transformer beside the INIT run, from scratch, on its cache
  until [ -f $R/multi.encoded ] || [ $(left) -lt 90 ]; do sleep 2; done
  [ -f $R/multi.encoded ] && ( INIT_ARGS=(); DIT="$WIDE"; stages multi-wide "" --recipe multi --reuse-from $R/multi ) &
fi
n=0; while [ -n "$(jobs -r)" ]; do  # the GPU's load every 30 s; the pack step starts within 5 s of the last run
  [ $((n++ % 6)) = 0 ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; sleep 5
done
wait
for f in $R/*/dit/metrics.jsonl; do echo "$f: $(tail -1 $f)"; done
$PY experiments/pack_world_runs.py $R "$OUT"  # here: python experiments/pack_world_runs.py --unpack FILES_AT MODELS
