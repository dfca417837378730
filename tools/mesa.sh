#!/usr/bin/env bash
# A second Mesa beside the system's: Debian bookworm-backports' mesa-vulkan-drivers
# (lavapipe, and RADV for compile-only reports), unpacked into $VKQ_MESA_DIR (default
# ./.drivers/mesa-<version>), never installed over the system's driver.
#   bash tools/mesa.sh setup          download and unpack it (idempotent)
#   bash tools/mesa.sh env            print the exports that select its lavapipe
#   bash tools/mesa.sh run CMD ...    run CMD with its lavapipe as the only Vulkan driver
# Only Debian's archive is asked: apt-get with a private sources list and state folder
# (no change to the system's apt configuration), then dpkg -x.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MESA_VERSION="${VKQ_MESA_VERSION:-25.0.7-2~bpo12+1}"
LIBDRM_VERSION="${VKQ_LIBDRM_VERSION:-2.4.123-1~bpo12+1}"
SUITE=bookworm-backports
DIR="${VKQ_MESA_DIR:-$here/.drivers/mesa-${MESA_VERSION%%-*}}"
ARCH_LIB="usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
say() { printf '[mesa] %s\n' "$*" >&2; }

setup() {
  if [ -f "$DIR/.done" ]; then
    say "ok: Mesa ${MESA_VERSION} in $DIR"
    return
  fi
  say "fetching Mesa ${MESA_VERSION} (lavapipe, RADV) from Debian's $SUITE into $DIR"
  local apt="$DIR/apt"
  rm -rf "$DIR"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources" "$DIR/debs"
  cat > "$apt/sources/backports.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/sources"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
              -o "APT::Sandbox::User=root" -qq)
  apt-get "${opts[@]}" update
  (cd "$DIR/debs" && apt-get "${opts[@]}" download "mesa-vulkan-drivers=$MESA_VERSION" \
      "libdrm2=$LIBDRM_VERSION" "libdrm-amdgpu1=$LIBDRM_VERSION") || {
    say "could not download mesa-vulkan-drivers=$MESA_VERSION from $SUITE; versions there:"
    apt-cache "${opts[@]}" policy mesa-vulkan-drivers >&2 || true
    say "set VKQ_MESA_VERSION (and VKQ_LIBDRM_VERSION) to one of them"
    exit 1
  }
  for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$DIR/root"; done
  local lib="$DIR/root/$ARCH_LIB"
  for drv in lvp radeon; do   # ICD files that name the unpacked libraries by full path
    sed "s#\"library_path\": \"[^\"]*\"#\"library_path\": \"$lib/libvulkan_$drv.so\"#" \
      "$DIR/root/usr/share/vulkan/icd.d/${drv}_icd.json" > "$DIR/${drv}_icd.json"
  done
  rm -rf "$apt" "$DIR/debs"
  touch "$DIR/.done"
  say "done: $DIR"
}

env_lines() {
  [ -f "$DIR/.done" ] || { say "not set up: run 'bash tools/mesa.sh setup'"; exit 1; }
  local lib="$DIR/root/$ARCH_LIB"
  echo "export VK_ICD_FILENAMES=$DIR/lvp_icd.json"
  echo "export VK_DRIVER_FILES=$DIR/lvp_icd.json"
  echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup) setup ;;
  env) env_lines ;;
  run) eval "$(env_lines)"; exec "$@" ;;
  *) echo "usage: bash tools/mesa.sh {setup|env|run CMD ...}" >&2; exit 2 ;;
esac
