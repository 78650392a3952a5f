#!/usr/bin/env bash
# The GPU checks of issue 16 item 2, as one short script for a lent GPU machine (one call of the device tool).
#
# Prepare here (a CPU machine with the project's venv), once:
#   python benchmarks/animate_fps.py --runs full:1 --portrait-cache .devcache/portrait --speech .devcache/speech
#   python -c "from pathlib import Path; import sys; sys.path[:0] = ['.', 'benchmarks']; \
#       from animate_fps import speech_wav; speech_wav(Path('.devcache/speech/speech_30s.wav'), 30)"
#   cp data/processed/expression_basis.npz .devcache/
#   (a renderer checkpoint without its optimizer state in .devcache/renderer_slim.pt; in .whl/ the wheels
#   ffmpeg-python and future; in .devbin/ static ffmpeg and ffprobe builds, xz-compressed (ffmpeg.xz, ffprobe.xz),
#   used where the machine has none: imageio-ffmpeg's wheel holds an ffmpeg, npm's @ffprobe-installer/linux-x64 an
#   ffprobe; together the carried folders must stay under the device tool's 64 MiB)
# Then, on the GPU machine, with .devcache, .devbin and .whl carried:
#   bash scripts/gpu_check.sh            # writes its logs and JSON to $OUT (default /tmp/gpu_check)
#   STEPS="tests animate" bash scripts/gpu_check.sh    # some steps: tests render_fps animate trained compile
#
# The GPU image has torch but neither mediapipe nor espeak-ng, so the portrait (mediapipe, a CPU stage) and the
# speech are made on the CPU machine and carried; everything else runs there for real. Each step has its own time
# limit and writes its own log, so one failing step leaves the others' figures.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log, say how it ended
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n "${TAIL:-40}" "$OUT/$name.log"
}

want() { [[ " ${STEPS:-tests render_fps animate trained compile} " == *" $1 "* ]]; }

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/ffmpeg_python-*.whl \
        .whl/future-*.whl && export PYTHONPATH=/tmp/site
fi
for tool in ffmpeg ffprobe; do  # static builds, xz-compressed in .devbin/, where the machine has none
    if ! command -v $tool >/dev/null && [ -f .devbin/$tool.xz ]; then
        mkdir -p /tmp/ffbin
        $PY -c "import lzma, os, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read()); os.chmod(sys.argv[2], 0o755)" \
            .devbin/$tool.xz /tmp/ffbin/$tool
        export PATH=/tmp/ffbin:$PATH
    fi
done
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
    ffmpeg -hide_banner -version | head -1
    ffprobe -hide_banner -version | head -1
    nproc
} 2>&1 | tee "$OUT/machine.txt"

# 1. The requires_cuda tests (a training step and render() against the CPU; fp16 + CUDA graphs against fp32).
want tests && TAIL=8 step tests 150 $PY -m pytest -q -p no:cacheprovider -m requires_cuda tests/test_cuda.py tests/test_render_fast.py

# 2. render(): the switch table vs SadTalker's per-frame loop, full config, 64 frames; the relation rows per batch.
want render_fps && TAIL=45 step render_fps 240 $PY benchmarks/render_fps.py --device cuda --configs full --frames-full 64 \
    --batch-sizes 8 32 --relation-rows --repeats 2 --json "$OUT/render_fps_cuda.json"

# 3. animate end to end, full config, 30 s of speech: fp32 as animate runs by default, then InferenceOptions.fastest.
# (options, batch, x264 threads): the first is animate before issue 16's encoder change (one x264 thread).
want animate && for spec in "none 8 1" "none 8 0" "fastest 8 0" "fastest 32 0"; do
    set -- $spec
    TAIL=6 step "animate_$1_b$2_t$3" 150 $PY benchmarks/animate_fps.py --device cuda --runs full:30 --options "$1" \
        --batch-size "$2" --encoder-threads "$3" --portrait-cache .devcache/portrait --speech .devcache/speech --basis .devcache/expression_basis.npz \
        --json "$OUT/animate_$1_b$2_t$3.json"
done

# 4. Reduced precision on trained weights (the pipeline's 64-px renderer), the PSNR column.
if want trained && [ -f .devcache/renderer_slim.pt ]; then
    TAIL=20 step render_fps_trained 90 $PY benchmarks/render_fps.py --device cuda --configs --checkpoint \
        .devcache/renderer_slim.pt --frames-small 64 --repeats 1 --no-reference --json "$OUT/render_fps_trained.json"
fi
# 5. torch.compile of the fastest switches (compile time reported apart), last: the longest and least needed.
want compile && TAIL=20 step render_fps_compile 170 $PY benchmarks/render_fps.py --device cuda --configs full --frames-full 64 \
    --repeats 1 --compile --no-noise-floor --json "$OUT/render_fps_compile.json"
echo "=== done"
