#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool; never CI):
#   versions -> float32 precision probe -> training-step and deploy-forward benchmarks
#   (jcaffe vs pure JAX vs PyTorch on CUDA) -> host work per call -> random draws -> optional A/Bs
#   -> the README's digits job -> tests,
# each stage under its own time limit, everything logged under $OUT.
#
#   bash benchmarks/device_check.sh [SECONDS]     (the whole budget; default 480)
#   AB="resnet50:default:update_at_end" bash benchmarks/device_check.sh 540
#
# The machine's own python3, JAX and PyTorch are used (nothing can be installed there
# from a registry); lmdb travels as a wheel in .whl/ (carry it).
set -u
BUDGET=${1:-480}
START=$SECONDS
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT" /tmp/bench
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false JCAFFE_COMPILATION_CACHE=off
exec > >(tee "$OUT/log.txt") 2>&1

left() { echo $((BUDGET - (SECONDS - START))); }
stage() { echo; echo "=== $1 (t=$((SECONDS - START)) s, $(left) s left)"; }

stage versions
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
nproc
python3 - <<'EOF' || { echo "jcaffe does not import or step here: stopping"; exit 1; }
import jax, numpy, google.protobuf, torch
print("jax", jax.__version__, "numpy", numpy.__version__, "protobuf",
      google.protobuf.__version__, "torch", torch.__version__, torch.cuda.is_available())
print("devices", jax.devices(), "matmul precision", jax.config.jax_default_matmul_precision)
import sys
sys.path.insert(0, "benchmarks")
import jcaffe
import nets
solver = nets.jcaffe_solver("lenet", 64)
solver.step(2)
print("LeNet step on", jax.default_backend(), "loss", float(solver._losses[-1]))
EOF

stage "float32 precision (relative error to float64)"
python3 - <<'EOF'
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
a, b = rng.standard_normal((1024, 1024)), rng.standard_normal((1024, 1024))
x, w = rng.standard_normal((8, 64, 32, 32)), rng.standard_normal((64, 64, 3, 3))
ref_mm = a @ b
ref_cv = np.asarray(jax.lax.conv(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                 (1, 1), "SAME", precision="highest"), np.float64)
for prec in (None, "high", "highest"):
    with jax.default_matmul_precision(prec):
        mm = np.asarray(jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32), np.float64)
        cv = np.asarray(jax.lax.conv(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                     (1, 1), "SAME"), np.float64)
    print("precision %-8s matmul %.1e  conv %.1e (conv vs its own 'highest')" % (
        prec, np.linalg.norm(mm - ref_mm) / np.linalg.norm(ref_mm),
        np.linalg.norm(cv - ref_cv) / np.linalg.norm(ref_cv)))
EOF

bench() {   # bench SCRIPT NET SECONDS REPEATS [STEPS per call]
    local t=$3 steps=${5:-1}
    [ "$t" -gt "$(left)" ] && t=$(left)
    [ "$t" -lt 20 ] && { echo "skipped $1 $2: no time left"; return; }
    stage "$1 --net $2 --steps $steps (limit $t s)"
    timeout "$t" python3 "benchmarks/$1" --net "$2" --repeats "$4" --warmup 3 --no-memory \
        $([ "$steps" -gt 1 ] && echo --steps "$steps") \
        --torch-device "${TORCH_DEVICE:-cuda}" \
        --json "/tmp/bench/${1%.py}_$2$([ "$steps" -gt 1 ] && echo "_x$steps").json" || echo "exit $?"
}
bench bench_train.py lenet 35 15
bench bench_train.py caffenet 45 15
bench bench_train.py resnet50 60 10
bench bench_train.py googlenet 60 10
# ten steps per call, waiting for the last: the host's work overlaps the GPU's, as in
# a training loop (bench_train.py --steps)
bench bench_train.py resnet50 60 5 10
bench bench_forward.py caffenet 30 15
bench bench_forward.py googlenet 45 10
# The host's work per call there (benchmarks/bench_host.py; jcaffe's own Python and its
# jitted call's arrays): what the steps above wait for beyond the GPU's kernels.
t=$(( $(left) < 100 ? $(left) : 100 ))
if [ "$t" -ge 40 ]; then
    stage "bench_host.py lenet,resnet50 (limit $t s)"
    timeout "$t" python3 benchmarks/bench_host.py --nets lenet,resnet50 --calls 20 --rounds 2 \
        --json /tmp/bench/bench_host.json || echo "exit $?"
fi
# jcaffe's random draws (classic threefry, jcaffe/rng.py) against JAX's default on the
# device: compile and run time (on the CPU the default compiled small draws 10x slower).
t=$(( $(left) < 40 ? $(left) : 40 ))
if [ "$t" -ge 20 ]; then
    stage "bench_rng.py (limit $t s)"
    timeout "$t" python3 benchmarks/bench_rng.py --repeats 10 || echo "exit $?"
fi
python3 - "$OUT/bench.json" <<'EOF'
import glob, json, os, sys
json.dump({os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob("/tmp/bench/*.json"))},
          open(sys.argv[1], "w"), indent=1)
EOF

# Optional A/Bs of the engine's rules (benchmarks/variants_engine.py), one process per
# variant and round: AB="resnet50:default:update_at_end caffenet:default:float32".
for spec in ${AB:-}; do
    IFS=: read -r net a b <<< "$spec"
    t=$(( $(left) < 120 ? $(left) : 120 ))
    [ "$t" -lt 30 ] && { echo "skipped A/B $spec: no time left"; continue; }
    stage "A/B $net: $a vs $b (limit $t s)"
    timeout "$t" python3 benchmarks/ab_step.py --net "$net" --variants \
        benchmarks/variants_engine.py "$a" "$b" --steps 20 --rounds 2 || echo "exit $?"
done

stage "digits example (README's main job), 500 iterations"
t=$(( $(left) < 40 ? $(left) : 40 ))
[ "$t" -ge 20 ] && { timeout "$t" python3 examples/digits/train.py --iters 500 \
    --out /tmp/digits || echo "exit $?"; }

# Layers and their gradchecks first; left out: the CPU's own formulations
# (conv_formulations, channels_last, xla_options), the benchmarks' tests, peak-RSS and
# host-device-count tests (memory, parallel), pydot drawings.
TESTS="test_gradcheck test_vision_catalog test_loss_catalog test_neuron_catalog
 test_gradcheck_properties test_vision_layers test_recurrent_layers test_normalization_layers
 test_common_layers test_reduce_layers test_shaping_layers test_loss_layers test_neuron_layers
 test_embed_layer test_model_zoo test_solver test_solver_snapshot test_backward_order
 test_caffe_questions test_lazy_blobs test_no_recompile test_row_blocks test_execution
 test_pycaffe_api test_net_init test_net_io test_to_jax test_explain test_materialize
 test_data_pipeline test_data_layers test_db test_cli"
stage "tests on the GPU"
t=$(( $(left) - 10 ))
if [ "$t" -gt 30 ]; then
    # SIGINT at the limit: pytest then still prints its summary and writes the XML.
    timeout -s INT -k 20 "$t" python3 -m pytest -v -p no:cacheprovider -n 14 --dist worksteal -rfE \
        --tb=short --junitxml="$OUT/junit.xml" -o addopts="-m 'not slow'" \
        ${DEVICE_TESTS:-$(for t in $TESTS; do printf "tests/%s.py " $t; done)} \
        > "$OUT/tests.txt" 2>&1
    echo "pytest exit $?"; tail -n 40 "$OUT/tests.txt"
fi
stage done
