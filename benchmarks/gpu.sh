#!/usr/bin/env bash
# The GPU benchmarks in one call, for a machine lent for a few minutes:
#   NETFIT_MNIST_DIR=... bash benchmarks/gpu.sh OUTDIR [SECONDS]
# 1. DNA's search step against a dense step on CIFAR-shaped input (synthetic 3x32x32, batch 256), alone on the GPU
#    so that the timings are clean (benchmarks.dna_steps --device cuda);
# 2. the MNIST-10k runs of blockwise, dnad and spider, every seed its own process, side by side until SECONDS
#    (default 480) after the start; dnad's seeds are then read back (--collect: an interrupted seed keeps what it
#    finished) with their supernet step times on 3x32x32 input too.
# Every results file written here and every log go into OUTDIR/gpu_results.tar.gz. SMOKE=1 shrinks every setting
# to a few seconds (digits data, 1 epoch, CPU allowed): a dry run of this script, not a measurement. JOBS picks
# what runs (default "steps blockwise spider tau dnad"); what one H200 did in 8 minutes (2026-12-04): steps 1 min,
# blockwise's ranking 4 min per seed, spider's compare 5-6 min per seed; tau and dnad did not finish (docs).
set -u
JOBS=" ${JOBS:-steps blockwise spider tau dnad} "
want() { [[ $JOBS == *" $1 "* ]]; }
OUT=${1:?usage: gpu.sh OUTDIR [SECONDS]}
SECONDS_TOTAL=${2:-480}
start=$(date +%s)
left() { # seconds to the deadline, at least 1 (timeout 0 would mean none)
  local l=$((SECONDS_TOTAL - ($(date +%s) - start)))
  echo $((l > 1 ? l : 1))
}
export PYTHONPATH=src:. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
marker=$(mktemp) # results files newer than this one are this call's
work=$(mktemp -d)
LOGS=$work/logs # packed with the results: OUTDIR gets one file
mkdir -p "$LOGS" "$OUT"

if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu DATA=digits SYN_N=64 BATCH=32 SEED_EPOCHS=1 EPOCHS=1 BLOCK_EPOCHS=1 ARCHS=2 SEARCH_EPOCHS=1
  SPIDER_EPOCHS=2 SPIDER_ITERS=1 DNA_SEARCH=1 NETWORKS=2 BUDGETS_BW="60%" SEEDS="0"
else
  DEVICE=cuda DATA=mnist10k SYN_N=2560 BATCH=256 SEED_EPOCHS=20 EPOCHS=15 BLOCK_EPOCHS=10 ARCHS=8 SEARCH_EPOCHS=10
  SPIDER_EPOCHS=20 SPIDER_ITERS=4 DNA_SEARCH=6 NETWORKS=20 BUDGETS_BW="25% 18%" SEEDS="0 1 2"
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  $PY -c "import netfit, typer, rich, safetensors, scipy, matplotlib; print('imports ok')"
} >"$LOGS/environment.log" 2>&1
cat "$LOGS/environment.log"

# -- 1. DNA step ratios, alone on the device
$PY -c "import numpy as np; r = np.random.default_rng(0); np.savez('$work/cifar_synthetic.npz', \
x=r.integers(0, 256, ($SYN_N, 3, 32, 32), dtype=np.uint8), y=r.integers(0, 10, $SYN_N))"
steps() { # NAME MODEL BUDGETS... : one dna_steps table
  local name=$1 model=$2
  shift 2
  timeout 120 $PY -m benchmarks.dna_steps --data "$work/cifar_synthetic.npz" --model "$model" --width 1 \
    --budgets "$@" --batch-size $BATCH --device $DEVICE --repeats 10 --name "$name" \
    --variant "passes batched" sample_pass=batched soft_pass=batched \
    --variant "one pass per step" sample_pass=batched soft_pass=joint \
    --variant "arch every 2" arch_every=2 >"$LOGS/dna_steps_${model}_$name.log" 2>&1
  echo "dna_steps $model $name: rc $?"
}
if want steps; then
  steps gpu_condense resnet18_cifar 50 25 10
  steps gpu_suite_budgets resnet18_cifar 50 25 10 5 2 1 150
  steps gpu_suite_budgets mobilenetv2 50 25 10 5 2 1 150
fi

# -- 2. the MNIST-10k runs, side by side: under CUDA MPS where it starts (the processes' many small kernels then
# share the GPU instead of taking turns), else plainly
mps=0
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=$work/mps CUDA_MPS_LOG_DIRECTORY=$work/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 20 $PY -c "import torch; print(torch.ones(2, device='cuda').sum().item())"; then
    mps=1
  else
    echo quit | nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
echo "MPS: $mps"
job() { # NAME COMMAND... : in the background until the deadline
  local name=$1
  shift
  timeout "$(left)" "$@" >"$LOGS/$name.log" 2>&1 &
}
DNAD_ARGS=(--data $DATA --model resnet18_cifar --width 0.25 --budgets 50 25 10 --seed-epochs $SEED_EPOCHS --epochs 6
  --search-epochs $SEARCH_EPOCHS --dna-search-epochs $((DNA_SEARCH + 2)) --cells 5 --channels 8 --batch-size 128 --lr 0.003
  --optimizer adamw --grad-clip 5 -x warmup_epochs 1 -x lr 0.003 -x arch_lr 3.0 -x gamma0 0.01 -x gamma_max 0.3
  -x phi 1.3 -x k 0.9 -x n_max 1.0 -x t_max 6 -x mu0 10.0 --root "$work/dnad")
for s in $SEEDS; do
  want blockwise && job blockwise_s$s $PY -m benchmarks.blockwise --data $DATA --model resnet18_cifar --width 0.25 \
    --budgets $BUDGETS_BW --seeds $s --seed-epochs $SEED_EPOCHS --block-epochs $BLOCK_EPOCHS --epochs $EPOCHS \
    --archs $ARCHS --randoms 2 --root "$work/blockwise" --tag _gpu_s$s
  want dnad && job dnad_s$s $PY -m benchmarks.dnad "${DNAD_ARGS[@]}" --seeds $s --tag _gpu_s$s
  want spider && job spider_s$s $PY -m benchmarks.spider compare --data $DATA --model cnn_small --budget 50% \
    --seeds $s --seed-epochs $SEED_EPOCHS --epochs $SPIDER_EPOCHS --iterations $SPIDER_ITERS --dna \
    --dna-search-epochs $DNA_SEARCH --root "$work/spider" --tag _gpu_p$s
done
want tau && job spider_tau $PY -m benchmarks.spider tau --data $DATA --model cnn_small --networks $NETWORKS \
  --epochs 6 --grad-clip 5 --tag _gpu --root "$work/spider_tau"
wait
if [ $mps = 1 ]; then
  echo quit | nvidia-cuda-mps-control
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
echo "side by side done after $(($(date +%s) - start)) s"
for s in $SEEDS; do # read back what each dnad seed finished, with the CIFAR-shaped step times
  want dnad && timeout 90 $PY -m benchmarks.dnad "${DNAD_ARGS[@]}" --seeds $s --tag _gpu_s$s --collect --timing-shape 3 32 32 \
    >"$LOGS/dnad_collect_s$s.log" 2>&1 &
done
wait
for f in "$LOGS"/*.log; do echo "== $f: $(tail -n 2 "$f" | tr '\n' ' ' | cut -c1-300)"; done
find benchmarks/results -newer "$marker" -type f | tar czf "$OUT/gpu_results.tar.gz" -T - -C "$work" logs
echo "packed $(tar tzf "$OUT/gpu_results.tar.gz" | wc -l) files after $(($(date +%s) - start)) s"
