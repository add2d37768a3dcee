#!/usr/bin/env bash
# Brown transformer variants on the GPU (one call): prints each run's final val/test perplexity.
# Usage: scripts/brown_sweep.sh BUILD_DIR "NAME:--set a=b --set c=d" ...
build=$1; shift
for spec in "$@"; do
  name=${spec%%:*}; sets=${spec#*:}
  # shellcheck disable=SC2086
  timeout 300 "$build/seqmix" train configs/brown-transformer.yaml --device cuda --set run.name=$name $sets > "${OUT:-/tmp}/brown_$name.log" 2>&1
  echo "$name ($sets): $(grep -E 'validation perplexity|test perplexity|step [0-9]+: val' "${OUT:-/tmp}/brown_$name.log" | sed 's/^\[[^]]*\] //' | tr '\n' ';')"
done
