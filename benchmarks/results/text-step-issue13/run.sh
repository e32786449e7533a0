# pairs 1-3; pairs 4-6 ran the same loop with "for i in 4 5 6"
#!/bin/bash
# alternate before/after, same interpreter, same script text
set -u
PY=/work/main/.venv/bin/python
for i in 1 2 3; do
  for side in before after; do
    if [ $side = before ]; then T=/tmp/text-step-before; else T=/work/wt-g13-runs; fi
    echo "=== pair $i $side $(git -C $T rev-parse --short HEAD) $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    ( cd $T && OMP_NUM_THREADS=2 PYTHONPATH=$T/src $PY benchmarks/text_step.py --threads 2 --backbone RN50 ) 2>&1 | grep -v Warning
  done
done
echo "=== done $(date -u +%H:%M:%S)"
