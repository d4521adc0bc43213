#!/bin/bash
# Issue 26's verdicts on the embedded sample, one sweep after another, each resuming where it
# stopped when the script is run again (a session may end mid-way; a trial it cut short is
# trained again). Alone on the host: two trainings at once on 2 CPUs slow each other ~6x.
#   nohup docs/experiments/verdict_sweeps.sh > verdict_sweeps.log 2>&1 &
# Runs go to sweeps/ (git-ignored); the code before issue 26 to a worktree at ../old, its DATA
# prepared by that code (the same id maps and the same train and test rows as this checkout's
# prepare of the sample, checked on raw ids: `ganrec compare --split test --data
# data/movielens-small` scores both codes' runs on one split). Then the compares in
# docs/results.md, *Ten paired seeds*.
set -ex
cd "$(dirname "$0")/../.."
CHECKOUT=$PWD
export RAY_USAGE_STATS_ENABLED=0
G=$CHECKOUT/.venv/bin/ganrec
[ -f data/movielens-small/manifest.json ] || $G prepare --source movielens-small --out data/movielens-small
$G sweep --config docs/experiments/embedded-seeds.yaml --test
$G sweep --config docs/experiments/embedded-sasrec.yaml --test
[ -d ../old ] || { git worktree prune; git worktree add ../old 8aa7523; }
cd ../old
OLD="env PYTHONPATH=. $CHECKOUT/.venv/bin/python -m ganrec_dist"
[ -f "$CHECKOUT/data/movielens-small-old/manifest.json" ] ||
  $OLD prepare --source movielens-small --out "$CHECKOUT/data/movielens-small-old"
sed -e "s#^out: .*#out: $CHECKOUT/sweeps/embedded-seeds-old#" \
  -e "s#^data: .*#data: $CHECKOUT/data/movielens-small-old#" \
  "$CHECKOUT/docs/experiments/embedded-seeds-old.yaml" > "$CHECKOUT/sweeps/embedded-seeds-old.yaml"
$OLD sweep --config "$CHECKOUT/sweeps/embedded-seeds-old.yaml" --test
