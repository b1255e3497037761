#!/usr/bin/env bash
# ablate's CUDA paths on one GPU, in one go, for a new GPU machine or cluster node: what runs, what
# falls back, and how fast. (Not yet run on a GPU: the step limits below are estimates.)
#
#   bash bench/gpu_check.sh [OUT_DIR]            default OUT_DIR: $OUT, else gpu_check/
#   ABLATE_WHEELS=wheels/ bash bench/gpu_check.sh   a node without network: install the wheels
#                                                   bench/offline_wheels.py fetched, first
#   bash bench/gpu_check.sh --cpu OUT_DIR        the same steps at toy sizes on a CPU (the script's
#                                                   own check; its figures mean nothing)
#   STEPS="train resume eval" bash bench/gpu_check.sh   some of the steps (default: all of them)
#
# Steps, each with its own time limit, its log in OUT_DIR/<step>.log and a line in OUT_DIR/summary.txt:
#   gpu          the GPU, the driver, torch and CUDA versions
#   bench_train  bench/gpu_train.py: ablate's llama2 against transformers' LlamaForCausalLM, compiled,
#                bf16 autocast, fused AdamW, at about 125M and 350M parameters (tokens/s, MFU, memory)
#   bench_flex   bench/flex_gpu.py: flex_attention compiled against eager attention, forward and
#                backward, for ALiBi, sliding windows and soft-caps
#   train        ablate-train on the GPU as a user runs it (train.compile=auto, precision=auto, fused
#                AdamW): RoPE, and Gemma 2 (sliding windows and soft-caps through flex), each run's
#                tokens/s, MFU and whether torch.compile fell back to eager
#   resume       a run stopped by SIGTERM after its first checkpoint and started again completes
#   eval         ablate-eval on the GPU (eval.device=auto; the extrapolation suite; skipped without
#                lm-eval), and the device its provenance records
# FSDP and DDP need two GPUs or more (NCCL puts one process on each): with one GPU they are not run.
set -uo pipefail

device=cuda
if [ "${1:-}" = "--cpu" ]; then device=cpu; shift; fi
# paths from where it is called
out=$(mkdir -p "${1:-${OUT:-gpu_check}}" && cd "${1:-${OUT:-gpu_check}}" && pwd)
wheels=${ABLATE_WHEELS:+$(cd "$ABLATE_WHEELS" 2>/dev/null && pwd)}
if [ -n "${ABLATE_WHEELS:-}" ] && [ -z "$wheels" ]; then
    echo "error: ABLATE_WHEELS=$ABLATE_WHEELS: no such directory (bench/offline_wheels.py DIR fills one)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
work=$(mktemp -d)
summary=$out/summary.txt
: >"$summary"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python3}

if [ -n "$wheels" ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl \
        || { echo "error: ABLATE_WHEELS=$ABLATE_WHEELS: the wheels did not install" | tee -a "$summary"; exit 2; }
    export PYTHONPATH=$PYTHONPATH:$work/site
fi

# want NAME: whether STEPS asks for it
want() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

# step NAME SECONDS COMMAND...: run it under a time limit, its output to NAME.log, a line to summary.txt
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    want "$name" || return 0
    echo "== $name: $*" >>"$out/$name.log"
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    rc=$?
    local verdict=ok
    [ $rc -eq 124 ] && verdict="timed out after ${limit}s"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && verdict="failed (exit $rc): see $name.log"
    printf '%-12s %5ds  %s\n' "$name" $((SECONDS - start)) "$verdict" | tee -a "$summary"
    return $rc
}

if [ $device = cuda ]; then
    sizes=125m,350m; train_size=(model.dim=768 model.n_layers=12 model.attention.n_heads=12 model.max_seq_len=1024
                                 train.micro_batch=16 train.batch_tokens=65536 train.tokens=3276800)
    bench_args=(); first_checkpoint=20
else
    sizes=tiny; train_size=(model.dim=64 model.n_layers=2 model.max_seq_len=64 train.micro_batch=8
                            train.batch_tokens=1024 train.tokens=20480 train.threads=2)
    bench_args=(--device cpu --seq 64 --vocab 512 --steps 2 --rounds 1 --warmup 1 --no-compile); first_checkpoint=5
fi
common=(results_dir="$work/results" data.synthetic_words=400000 data.vocab_size=4096
        data.cache_dir="$work/cache" train.device=$device train.log_every=50 train.eval_every=0
        train.checkpoint_every=1000000 train.progress=lines "${train_size[@]}")

step gpu 60 "$python" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, round(p.total_memory / 2**30, 1), 'GiB,', p.multi_processor_count, 'SMs, capability', p.major, p.minor)
"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/gpu.log" 2>&1

step bench_train 330 "$python" bench/gpu_train.py --sizes $sizes "${bench_args[@]}"
if [ $device = cuda ]; then
    step bench_flex 150 "$python" bench/flex_gpu.py
elif want bench_flex; then
    echo "bench_flex       0s  skipped: flex_attention's backward needs CUDA" | tee -a "$summary"
fi

# the user's command: RoPE through SDPA, Gemma 2 through flex; compiled and in bf16 where the device has them
for variant in "rope:" "gemma2:model=gemma2"; do
    name=${variant%%:*}; override=${variant#*:}
    step "train" 240 "$python" -m ablate.train "${common[@]}" run_name="$name" ${override:+"$override"}
done
want train && "$python" - "$work/results/default" >>"$summary" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("*")):
    if (run / "summary.json").exists():
        s = json.loads((run / "summary.json").read_text())
        log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
        compiled = "compile fell back to eager" if "torch.compile failed" in log else "no compile fallback"
        print(f"  {run.name:8s} {s['status']:10s} {s['device']:6s} {s['precision']:4s} {s['params']/1e6:6.1f}M params "
              f"{s['tokens_per_s']:10,.0f} tok/s  mfu {s['mfu']}  val_loss {s['val_loss']:.3f}  {compiled}")
EOF

# a stop on SIGTERM after the first checkpoint (what Slurm sends before a time limit), then a resume
resume=(run_name=resumed train.checkpoint_every=$first_checkpoint)
if want resume; then
    "$python" -m ablate.train "${common[@]}" "${resume[@]}" >"$out/resume.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        compgen -G "$work/results/default/resumed/checkpoints/step_*" >/dev/null && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.5
    done
    kill -TERM $pid 2>/dev/null
    wait $pid
fi
step resume 240 "$python" -m ablate.train "${common[@]}" "${resume[@]}"
want resume && [ -e "$work/results/default/resumed/summary.json" ] && "$python" -c "
import json, sys
s = json.load(open(sys.argv[1]))
print('  resumed', s['status'], 'after', [a['status'] + ' at step ' + str(a['step']) for a in s.get('attempts', [])])
" "$work/results/default/resumed/summary.json" >>"$summary" 2>&1

if "$python" -c "import lm_eval" 2>/dev/null; then
    if want eval && [ ! -e "$work/results/default/rope/summary.json" ]; then  # the run it evaluates
        timeout 240 "$python" -m ablate.train "${common[@]}" run_name=rope >>"$out/train.log" 2>&1
    fi
    step eval 180 "$python" -m ablate.evaluate run="$work/results/default/rope" suite=extrapolation &&
        want eval && "$python" -c "
import json, sys
print('  evaluated on', json.load(open(sys.argv[1]))['provenance']['device'])
" "$work/results/default/rope/eval/extrapolation.json" >>"$summary" 2>&1
elif want eval; then
    echo "eval         skipped: lm-eval is not installed (bench/offline_wheels.py fetches it)" | tee -a "$summary"
fi

echo "logs and summary in $out"
cat "$summary"
rm -rf "$work"
