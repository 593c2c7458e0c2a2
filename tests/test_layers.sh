#!/bin/sh
# The layering rule, read from the #include lines: a folder of src/ includes only headers of its
# own layer and of the layers below it, never above. Layers, lowest first (docs/architecture.md):
#   core kernels autograd ops attention nn model optim data dist io decode train cli
# Public headers (include/cformer/) belong to the layer named below; a header missing from the
# table fails, so a new header must be given its layer. Prints one CHECK per include and a RESULT
# line for tests/run.sh.
cd "$(dirname "$0")/.." || exit 1
order="core kernels autograd ops attention nn model optim data dist io decode train cli"
headers="core:core param:core schema:core kernels:kernels ops:ops attention:attention nn:nn
model:model encdec:model optim:optim data:data pairs:data dataset:data dist:dist h5io:io config:io
checkpoint:io decode:decode train:train cformer:cli"
rank() { i=0; for l in $order; do [ "$l" = "$1" ] && { echo $i; return; }; i=$((i + 1)); done; echo -1; }
header_layer() { for h in $headers; do [ "${h%%:*}" = "$1" ] && { echo "${h#*:}"; return; }; done; }

pass=0; fail=0
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
for h in include/cformer/*.h; do
  n=$(basename "$h" .h)
  [ -n "$(header_layer "$n")" ] && pass=$((pass + 1)) || bad "$h: no layer given in tests/test_layers.sh"
done
for f in src/*/*.c src/*/*.h include/cformer/*.h; do
  case $f in
    include/*) own=$(header_layer "$(basename "$f" .h)") ;;
    *) own=$(echo "$f" | cut -d/ -f2) ;;
  esac
  r=$(rank "$own")
  [ "$r" -ge 0 ] || { bad "$f: folder $own is not a layer"; continue; }
  for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
    case $inc in
      cformer/*.h) l=$(header_layer "$(basename "$inc" .h)") ;;
      ../*/*) l=$(echo "$inc" | cut -d/ -f2) ;;
      */*) l=$own ;;
      *) if [ "${f#include/}" != "$f" ]; then l=$(header_layer "$(basename "$inc" .h)"); else l=$own; fi ;;
    esac
    li=$(rank "${l:-?}")
    if [ "$li" -ge 0 ] && [ "$li" -le "$r" ]; then pass=$((pass + 1))
    else bad "$f ($own) includes \"$inc\" (${l:-unknown layer}): a lower layer must not include a higher one"; fi
  done
done
echo "RESULT passed=$pass failed=$fail"
[ "$fail" -eq 0 ]
