#!/usr/bin/env bash
# CI regression of an exported artifact against reference outputs stored once.
#
#   regress.sh store ARTIFACT GOLDEN_DIR [validate options]
#       Once (and again only when a change of the outputs is intended): run the PyTorch
#       reference of the checkpoint the artifact was exported from (or --checkpoint DIR),
#       store its tokens, logits and derived tolerance in GOLDEN_DIR (commit that folder),
#       and validate ARTIFACT against it.
#   regress.sh check ARTIFACT GOLDEN_DIR OUT_DIR [validate options]
#       Every later build: feed ARTIFACT the stored tokens and compare its logits with the
#       stored ones within the stored tolerance. No PyTorch, no checkpoint needed. Writes
#       OUT_DIR/validation.json and OUT_DIR/junit.xml.
#
# Exit code (uniattn-export validate's): 0 passed, 1 regression, 2 bad input.
# UNIATTN_EXPORT overrides the command (default: uniattn-export), e.g. "python -m uniattn_export".
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
read -r -a cli <<< "${UNIATTN_EXPORT:-uniattn-export}"
mode=$1 artifact=$2 golden=$3
shift 3
case "$mode" in
  store)
    exec "${cli[@]}" validate "$artifact" --golden "$golden" --update-golden "$@"
    ;;
  check)
    [ $# -ge 1 ] || usage
    out=$1
    shift
    if [ ! -f "$golden/golden.json" ]; then
      echo "regress.sh: error: $golden holds no golden outputs. Store them once with: regress.sh store ARTIFACT $golden" >&2
      exit 2
    fi
    mkdir -p "$out"
    exec "${cli[@]}" validate "$artifact" --golden "$golden" \
      --report "$out/validation.json" --junit "$out/junit.xml" "$@"
    ;;
  *)
    usage
    ;;
esac
