#!/usr/bin/env bash
# Run the demo model's semantic tests against broken copies of the Inject: each mutation must fail them.
#     source dev/env.sh && bash dev/mutate_demo_tests.sh        # ~6 min on 2 cores
# Each run copies the working tree (no .git) to a temporary folder, changes one line of
# fpe_attention/inject.py there and runs tests/workflows/test_demo_semantics.py; the checkout is untouched.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
mutate() {  # name, old text, new text (each must occur once)
  local name=$1 old=$2 new=$3
  rm -rf "$scratch/tree" && mkdir "$scratch/tree"
  (cd "$repo" && tar --exclude=.git --exclude=output --exclude=test-artifacts -cf - .) | (cd "$scratch/tree" && tar xf -)
  python - "$scratch/tree/fpe_attention/inject.py" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert text.count(old) == 1, f"the mutation's text occurs {text.count(old)} times in {path}"
open(path, "w").write(text.replace(old, new))
PY
  local result
  result=$(cd "$scratch/tree" && OMP_NUM_THREADS=2 python -m pytest tests/workflows/test_demo_semantics.py -q \
           -p no:cacheprovider 2>&1 | tail -1)  # pytest's summary: "4 passed in ..", "3 failed, 1 passed in .."
  local clean=no
  [[ "$result" =~ ^[0-9]+\ passed\ in ]] && clean=yes
  echo "$name: $result"
  if [ "$name" = "unchanged" ]; then
    [ $clean = yes ] || status=1
  else
    [ $clean = no ] || status=1
  fi
}
LAYER_GATE="        layer = layer_key(extra_options)
        if layer not in self.layers:
            return n, context, value
        picked = self._rows_at(call.step, layer)"
mutate "unchanged" "$LAYER_GATE" "$LAYER_GATE"
mutate "injection disabled" "        if not self._edits(call):
            return n, context, value
        layer = layer_key(extra_options)" "        if True:
            return n, context, value
        layer = layer_key(extra_options)"
mutate "wrong rows (each image gets the next seed's source)" \
  "                edited[chunk.rows] = src.to(device=n.device, dtype=n.dtype)" \
  "                edited[chunk.rows] = src.roll(1, 0).to(device=n.device, dtype=n.dtype)"
mutate "wrong rows (uncond rows instead of cond rows)" "            if chunk.kind not in self.kinds:" \
  "            if chunk.kind in self.kinds:"
mutate "wrong layers (input blocks only)" "$LAYER_GATE" "${LAYER_GATE/if layer not in self.layers:/if layer not in self.layers or layer[0] != \'input\':}"
mutate "wrong layers (output blocks only)" "$LAYER_GATE" "${LAYER_GATE/if layer not in self.layers:/if layer not in self.layers or layer[0] != \'output\':}"
exit $status
