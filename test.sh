#!/usr/bin/env bash
# The whole test suite: installs what it needs (Debian packages, the pinned Deno), then checks
# formatting, lint and types and runs every test, virtual-machine tests included; then the quick
# benchmarks with their floors (`deno task bench --quick --check`).
#   ./test.sh              everything (root needed: namespaces, qemu, mounts)
#   ./test.sh --skip-vm    skip the slow qemu boot tests (they still run in CI)
#   ./test.sh [--skip-vm] [deno test args…]   e.g. ./test.sh tests/dhcp_test.ts
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
export NO_COLOR=1 DENO_NO_UPDATE_CHECK=1 RUST_BACKTRACE=0
if [ "${1:-}" = "--skip-vm" ]; then export NETROOT_SKIP_VM=1; shift; fi

# The aarch64 e2e downloads arm64 packages (kernel, busybox-static, libc6): the architecture must be
# known to dpkg (idempotent; the x86 packages are untouched) and its package lists present.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then dpkg --add-architecture arm64; fi
missing=()
while read -r p; do
  [ -z "$p" ] || [ "${p#\#}" != "$p" ] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done < tools/apt-packages.txt
# The e2e tests `apt-get download` the kernel and busybox-static: package lists must exist.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 ||
  ! ls /var/lib/apt/lists/*binary-arm64_Packages* >/dev/null 2>&1; then
  apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ ! -x tools/node_modules/.bin/deno ]; then npm ci --prefix tools --no-audit --no-fund; fi
export PATH="$PWD/tools/node_modules/.bin:$PATH"
deno --version | head -1
deno install            # frozen lock: fails if deno.lock is stale
# `deno bundle` (the node program of every initramfs built from a checkout) fetches its esbuild from
# npm on first use: fetch it now, so that a server a test runs in a network namespace finds it.
deno bundle --quiet --platform deno -o /dev/null overlay/node_main.ts
deno fmt --check
deno lint
deno task check
set +e
deno test -A --parallel "${@:-tests/}" 2>&1 | tee .test.log
rc=${PIPESTATUS[0]}
set -e
# Deno's closing line is `ok | 3 passed (2 steps) | 0 failed (19ms)`; re-print it plainly.
sed -nE 's/^(ok|FAILED) \| ([0-9]+) passed( \([0-9]+ steps?\))? \| ([0-9]+) failed.*/\2 passed, \4 failed/p' .test.log | tail -1
# The whole suite also holds the benchmark floors (quick variant, after the tests: not beside them).
if [ "$rc" = 0 ] && [ $# -eq 0 ]; then
  set +e
  deno task bench --quick --check 2>&1 | tee .bench.log
  rc=${PIPESTATUS[0]}
  set -e
fi
exit "$rc"
