#!/usr/bin/env bash
# Regenerates every committed result under benchmarks/results/ and the README tables, on a quiet machine.
#   benchmarks/run_all.sh            # CPU figures (and GPU figures too when CUDA is available)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
R=benchmarks/results
mkdir -p "$R"
$PY benchmarks/throughput.py --device cpu --results-file $R/cpu_resnet18.json --plot $R/cpu_resnet18.png
$PY benchmarks/throughput.py --device cpu --model resnet50 --img-size 160 --batch-size 16 \
    --results-file $R/cpu_resnet50_160.json --plot $R/cpu_resnet50_160.png
$PY benchmarks/throughput.py --device cpu --model efficientnet_b0 --steps 40 --results-file $R/cpu_efficientnet_b0.json
$PY benchmarks/fast_levers.py --device cpu --model resnet50 --img-size 160 --batch-size 16 \
    --results-file $R/cpu_fast_levers_resnet50.json
$PY benchmarks/feature_cache.py --device cpu --results-file $R/cpu_feature_cache_resnet50.json
$PY benchmarks/freeze_depth.py --device cpu --results-file $R/cpu_freeze_depth.json --plot $R/cpu_freeze_depth.png
$PY benchmarks/accuracy.py --results-file $R/cpu_accuracy_digits.json --plot $R/cpu_accuracy_digits.png
OMP_NUM_THREADS=1 $PY benchmarks/progressive.py --modes full schedule gradient schedule_uncached gradient_uncached \
    --results-file $R/cpu_progressive_digits.json --plot $R/cpu_progressive_digits.png
OMP_NUM_THREADS=1 $PY benchmarks/progressive.py --modes full schedule --start 0.3 --no-memory \
    --results-file $R/cpu_progressive_digits_start03.json --plot $R/cpu_progressive_digits_start03.png
tables=($R/cpu_resnet18.json $R/cpu_resnet50_160.json $R/cpu_efficientnet_b0.json $R/cpu_fast_levers_resnet50.json
        $R/cpu_feature_cache_resnet50.json $R/cpu_freeze_depth.json)
if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    $PY benchmarks/throughput.py --device cuda --model resnet50 --batch-size 128 --precision bf16 --channels-last \
        --results-file $R/cuda_resnet50_bf16.json --plot $R/cuda_resnet50_bf16.png
    $PY benchmarks/throughput.py --device cuda --model resnet50 --batch-size 128 --precision bf16 --channels-last \
        --compile --results-file $R/cuda_resnet50_bf16_compile.json
    $PY benchmarks/freeze_depth.py --device cuda --precision bf16 --channels-last \
        --results-file $R/cuda_freeze_depth.json --plot $R/cuda_freeze_depth.png
    $PY benchmarks/fast_levers.py --device cuda --model resnet50 --img-size 224 --batch-size 128 \
        --results-file $R/cuda_fast_levers_resnet50.json
    $PY benchmarks/feature_cache.py --device cuda --results-file $R/cuda_feature_cache_resnet50.json
    $PY benchmarks/progressive.py --device cuda --results-file $R/cuda_progressive_digits.json \
        --plot $R/cuda_progressive_digits.png
    tables+=($R/cuda_resnet50_bf16.json $R/cuda_resnet50_bf16_compile.json $R/cuda_fast_levers_resnet50.json
             $R/cuda_freeze_depth.json $R/cuda_feature_cache_resnet50.json)
fi
$PY benchmarks/readme_table.py --update benchmarks/README.md --headline README.md "${tables[@]}"
