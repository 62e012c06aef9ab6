#!/usr/bin/env bash
# Old code against this checkout, alternately in one sitting: the training-speed subset twice and
# the serving load three times for each version, then the comparison tables.
#
#   benchmarks/versions.sh OLD_REV [OUT_DIR]      e.g. benchmarks/versions.sh 1342a92 /tmp/versions
#
# OLD_REV is checked out as a detached git worktree beside this one; both versions run with this
# checkout's .venv, each with its own src/ first on PYTHONPATH. Nothing else should run meanwhile.
set -euo pipefail
old_rev=${1:?usage: benchmarks/versions.sh OLD_REV [OUT_DIR]}
out=${2:-/tmp/medlens-versions}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
old="$here/../medlens-$old_rev"
[ -d "$old" ] || git -C "$here" worktree add -q --detach "$old" "$old_rev"
mkdir -p "$out"
run() {  # version-dir label script args...
  local dir=$1 label=$2 script=$3; shift 3
  (cd "$dir" && PYTHONPATH="$dir/src" MEDLENS_CACHE="$out/cache-$label" "$py" "benchmarks/$script" "$@")
}
for i in 1 2; do
  for v in old new; do
    dir=$([ $v = old ] && echo "$old" || echo "$here")
    run "$dir" $v train_speed.py --models cnn_small,resnet_compact,resnet18 --configs 2d28,3d28 --rounds 3 \
      --out "$out/train_speed-$v-$i.json" > "$out/train_speed-$v-$i.log" 2>&1
  done
done
for i in 1 2 3; do
  for v in old new; do
    dir=$([ $v = old ] && echo "$old" || echo "$here")
    run "$dir" $v serve_load.py --out "$out/serve_load-$v-$i.json" > "$out/serve_load-$v-$i.log" 2>&1
  done
done
"$py" "$here/benchmarks/compare_versions.py" train_speed --old "$out"/train_speed-old-*.json --new "$out"/train_speed-new-*.json
echo
"$py" "$here/benchmarks/compare_versions.py" serve_load --old "$out"/serve_load-old-*.json --new "$out"/serve_load-new-*.json
