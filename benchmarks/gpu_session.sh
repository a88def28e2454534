#!/usr/bin/env bash
# The device checks for a session lent a GPU, as one prepared run: the CUDA tests, then the packed
# benchmarks, each under its own time limit so one failure does not cost the rest (at most 9.5
# minutes in all). Needs only torch and pytest, which the device image has; the package need not be
# installed. From the repository root:
#
#   OUT=/some/folder bash benchmarks/gpu_session.sh        # results in $OUT/*.txt
#
# The device tool's call is: run(command="bash benchmarks/gpu_session.sh", timeout_s=600).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script on a machine without a GPU
export IRNN_SEARCH_TEST_DEVICE=$DEVICE
step() {  # step NAME SECONDS COMMAND...: run it, keep its output in $OUT/NAME.txt, go on whatever it returns
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $?"
  tail -n 25 "$OUT/$name.txt"
}
step device 30 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'"
# --noconftest: tests/conftest.py brings the server fixtures (sqlalchemy, psycopg), absent there.
step tests 120 "$PY" -m pytest -q -p no:cacheprovider --noconftest -o addopts="" tests/packed/test_cuda.py
# Does a packed member's arithmetic depend on its pack on this device? (0: reproduce lines with
# --packed retrace any packed trial here, as they do on CPU.)
step independence 40 "$PY" benchmarks/pack_independence.py --device "$DEVICE" --K 4,16 --steps 60
step scan 60 "$PY" benchmarks/scan_variants.py --device "$DEVICE" --K 64 --repeat 5 --iters 10 --no-compile
step packed-adding 150 "$PY" benchmarks/packed_speed.py --device "$DEVICE" --shapes adding --hidden 100,128 \
  --K 1,4,16,64,256 --steps 10 --workers 16
step packed-smnist 120 "$PY" benchmarks/packed_speed.py --device "$DEVICE" --shapes smnist --hidden 128,100 \
  --K-long 1,4,16,64,256 --steps 10 --workers 16
# Last: torch.compile's first call (forward and backward of a 150-step loop) may take minutes.
step scan-compile 50 "$PY" benchmarks/scan_variants.py --device "$DEVICE" --K 64 --repeat 3 --iters 10
exit 0
