#!/usr/bin/env bash
# Run the test suite under the Khronos validation layer; any validation error fails.
#
# The layer prints nothing unless a settings file asks it to, so this script writes one
# (errors and warnings, logged to stderr, and synchronization validation on) and points
# VK_LAYER_SETTINGS_PATH at it. It first proves that errors really surface: a deliberately
# invalid shader (one declaring the Float64 capability, which vkqlinear never enables) and
# a read-after-write hazard (two dispatches with no barrier between them) must each produce
# a "Validation Error".
# Usage: tools/validation_run.sh [pytest args...]   (run inside the venv of tools/setup.sh)
# VKQ_GPU_AV=1: GPU-assisted validation (descriptors and buffer accesses checked as the
# shaders run; slow: every pipeline is instrumented) instead of synchronization validation.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$here/.venv/bin/python}"
say() { printf '[validation] %s\n' "$*"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/vk_layer_settings.txt" <<SETTINGS
khronos_validation.report_flags = error,warn
khronos_validation.debug_action = VK_DBG_LAYER_ACTION_LOG_MSG
khronos_validation.log_filename = /dev/stderr
SETTINGS
if [ "${VKQ_GPU_AV:-0}" = 1 ]; then
  echo "khronos_validation.enables = VK_VALIDATION_FEATURE_ENABLE_GPU_ASSISTED_EXT" \
    >> "$work/vk_layer_settings.txt"
else
  echo "khronos_validation.enables = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT" \
    >> "$work/vk_layer_settings.txt"
fi
export VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation
export VK_LAYER_SETTINGS_PATH="$work/vk_layer_settings.txt"

say "self-check: an invalid shader must be reported"
"$PY" - > "$work/self.log" 2>&1 <<'PYEOF'
import numpy as np, kp, subprocess, tempfile, os
src = """#version 450
layout(local_size_x = 1) in;
layout(std430, binding = 0) buffer B { uint v[]; };
void main() { double a = double(v[0]) * 3.0lf; v[0] = uint(a); }
"""
d = tempfile.mkdtemp()
open(os.path.join(d, "bad.comp"), "w").write(src)
subprocess.run(["glslangValidator", "-V", "--target-env", "vulkan1.1", "-o",
                os.path.join(d, "bad.spv"), os.path.join(d, "bad.comp")], check=True,
               capture_output=True)
m = kp.Manager()
t = m.tensor_t(np.ones(4, dtype=np.uint32))
a = m.algorithm([t], open(os.path.join(d, "bad.spv"), "rb").read(), (1, 1, 1),
                np.array([], np.uint32), np.array([], np.uint32))
m.sequence().record(kp.OpAlgoDispatch(a)).eval()
PYEOF
if ! grep -q "Validation Error" "$work/self.log"; then
  say "FAILED: the layer did not report the invalid shader; validation is not active:"
  cat "$work/self.log"
  exit 1
fi
say "ok: the layer reports errors"

if [ "${VKQ_GPU_AV:-0}" != 1 ]; then
say "self-check: a missing barrier must be reported (synchronization validation)"
"$PY" - > "$work/sync.log" 2>&1 <<'PYEOF'
import numpy as np, kp, subprocess, tempfile, os
src = """#version 450
layout(local_size_x = 1) in;
layout(std430, binding = 0) readonly buffer A { uint a[]; };
layout(std430, binding = 1) writeonly buffer B { uint b[]; };
void main() { b[0] = a[0] + 1u; }
"""
d = tempfile.mkdtemp()
open(os.path.join(d, "c.comp"), "w").write(src)
subprocess.run(["glslangValidator", "-V", "--target-env", "vulkan1.1", "-o",
                os.path.join(d, "c.spv"), os.path.join(d, "c.comp")], check=True,
               capture_output=True)
spv = open(os.path.join(d, "c.spv"), "rb").read()
m = kp.Manager()
t = [m.tensor_t(np.ones(4, dtype=np.uint32)) for _ in range(3)]
none = np.array([], np.uint32)
first = m.algorithm([t[0], t[1]], spv, (1, 1, 1), none, none)
second = m.algorithm([t[1], t[2]], spv, (1, 1, 1), none, none)   # reads what first wrote
m.sequence().record(kp.OpAlgoDispatch(first)).record(kp.OpAlgoDispatch(second)).eval()
PYEOF
if ! grep -q "SYNC-HAZARD-READ-AFTER-WRITE" "$work/sync.log"; then
  say "FAILED: the layer did not report the hazard; synchronization validation is off:"
  cat "$work/sync.log"
  exit 1
fi
say "ok: the layer reports hazards"
fi

say "device probe under the layer"
"$PY" -m vkqlinear._probe > /dev/null 2> "$work/probe.log"
say "test suite under the layer: pytest -s $*"
"$PY" -m pytest -s -q -p no:cacheprovider "$@" 2>&1 | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
errors=$(cat "$work/probe.log" "$work/pytest.log" | grep -c "Validation Error")
warnings=$(cat "$work/probe.log" "$work/pytest.log" | grep -c "Validation Warning")
say "validation errors: $errors, warnings: $warnings, pytest exit code: $rc"
if [ "$errors" -gt 0 ]; then
  cat "$work/probe.log" "$work/pytest.log" | grep -A3 "Validation Error" | head -60
  exit 1
fi
# pytest's own closing line last, so that it is what a reader of the log sees at the end.
grep -E "^=*[ ]*[0-9]+ (passed|failed)" "$work/pytest.log" | tail -1
exit "$rc"
