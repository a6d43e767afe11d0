#!/usr/bin/env bash
# Make the optional @tensorflow/tfjs-node backend usable: node_modules is installed with
# ignore-scripts=true, so its native addon is never built and its install script would fetch
# libtensorflow from Google storage (unreachable here). Instead:
#   1. take libtensorflow from PyPI's tensorflow-cpu wheel (sha256-pinned), extract the shared
#      libraries + C API headers into a cache outside the checkout (keyed by TF version);
#   2. lay them out as the package's deps/ (the names its binding.gyp links and install.js checks);
#   3. build tfjs_binding.node from source against the pinned Node (scripts/node.sh), or restore
#      it from the cache (keyed by tfjs-node + Node + TF versions);
#   4. patch the package's dist/ for Node >= 23 (removed util.isNullOrUndefined, see patch_dist);
#   5. check that `import('@tensorflow/tfjs-node')` runs ops on the "tensorflow" backend.
# Idempotent and safe to re-run (and to run concurrently: a lock serialises runs). Prints one
# line on success; on failure exits non-zero with a message on stderr.
#
# Env: CONSORT_CACHE (default ~/.cache/consort), CONSORT_TF_VERSION (default 2.12.1; any other
# version also needs CONSORT_TF_WHEEL_SHA256 and, for >= 2.19 or so, CONSORT_TF_WHEEL_PLATFORM,
# e.g. manylinux_2_27_x86_64), CONSORT_TFJS_NATIVE_FORCE=1 (rebuild the addon even if cached).
set -euo pipefail

die() { echo "tfjs-native: error: $*" >&2; exit 1; }
trap 'echo "tfjs-native: error: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CONSORT_CACHE:-$HOME/.cache/consort}"
TF_VERSION="${CONSORT_TF_VERSION:-2.12.1}"
case "$TF_VERSION" in
  2.12.1)
    TF_WHEEL_SHA256=7ffb595707a8fb376deaddc768784c7a0242b16cbc6e06393b1733b2ce19f855
    TF_WHEEL_PLATFORM=manylinux2014_x86_64 ;;
  *)
    TF_WHEEL_SHA256="${CONSORT_TF_WHEEL_SHA256:-}"
    TF_WHEEL_PLATFORM="${CONSORT_TF_WHEEL_PLATFORM:-manylinux2014_x86_64}"
    [ -n "$TF_WHEEL_SHA256" ] || die "CONSORT_TF_VERSION=$TF_VERSION needs CONSORT_TF_WHEEL_SHA256 (only 2.12.1 is pinned here)" ;;
esac
TF_WHEEL_PLATFORM="${CONSORT_TF_WHEEL_PLATFORM:-$TF_WHEEL_PLATFORM}"
FORCE="${CONSORT_TFJS_NATIVE_FORCE:-0}"
START=$EPOCHREALTIME
NOTE=""
elapsed() { awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || die "only linux x86_64 is supported (got $(uname -s)-$(uname -m))"
PKG="$REPO/node_modules/@tensorflow/tfjs-node"
[ -f "$PKG/package.json" ] || die "$PKG is missing; run 'npm ci' first"

NODE_BIN="$(bash "$REPO/scripts/node.sh")" || die "scripts/node.sh failed to provision Node"
export PATH="$NODE_BIN:$PATH"
NODE_DIR="$(dirname "$NODE_BIN")"             # contains include/node: node-gyp's --nodedir
[ -f "$NODE_DIR/include/node/node_api.h" ] || die "no Node headers in $NODE_DIR/include/node"
NODE_VERSION="$(node -p process.version)"
TFJS_VERSION="$(node -p "require('$PKG/package.json').version")"
# Where the package's loader (node-pre-gyp find) will look for the addon, e.g. lib/napi-v8/.
BINDING="$(cd "$PKG" && node -p "require(require.resolve('@mapbox/node-pre-gyp',{paths:['$PKG']})).find('$PKG/package.json')")" \
  || die "cannot resolve @mapbox/node-pre-gyp from $PKG (incomplete node_modules? run 'npm ci')"
case "$BINDING" in "$PKG"/*) ;; *) die "unexpected addon path $BINDING" ;; esac

TF_DIR="$CACHE/libtensorflow-$TF_VERSION-linux-x86_64"
ADDON_KEY="tfjs-node-$TFJS_VERSION-node-$NODE_VERSION-tf-$TF_VERSION"
ADDON_DIR="$CACHE/tfjs-node-addon/$ADDON_KEY"
DEPS="$PKG/deps"
STAMP="$DEPS/.consort-tfjs-native"
STAMP_TEXT="$ADDON_KEY ${BINDING#"$PKG"/}"

mkdir -p "$CACHE"
exec 9>"$CACHE/.tfjs-native.lock"
flock 9 || die "cannot lock $CACHE/.tfjs-native.lock"

LOG="$(mktemp "${TMPDIR:-/tmp}/tfjs-native.XXXXXX.log")"
WORK=""
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
fail_log() { echo "tfjs-native: error: $1 (log: $LOG)" >&2; tail -n 30 "$LOG" | sed 's/^/  | /' >&2; exit 1; }

# tfjs-node <= 4.22.0 calls util.isNullOrUndefined / util.isArray, which Node 23 removed, so
# most ops (matMul, topk, ...) throw "(0 , util_1.isNullOrUndefined) is not a function" on Node 24
# (tensorflow/tfjs#8609; fixed upstream by #8425, unreleased). Apply the same fix to dist/*.js.
# Idempotent: rewrites only files that still reference them, so it runs on every invocation.
patch_dist() {
  local n
  node - "$PKG/dist" >"$LOG.n" 2>>"$LOG" <<'JS' || fail_log "patching @tensorflow/tfjs-node/dist for Node >= 23 failed"
const fs = require('fs'), path = require('path');
const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) =>
  e.isDirectory() ? walk(path.join(d, e.name)) : e.name.endsWith('.js') ? [path.join(d, e.name)] : []);
let n = 0;
for (const f of walk(process.argv[2])) {
  const src = fs.readFileSync(f, 'utf8');
  const out = src
    .replaceAll('(0, util_1.isNullOrUndefined)', '(0, function (x) { return x === null || x === undefined; })')
    .replaceAll('(0, util_1.isArray)', '(0, Array.isArray)');
  if (out !== src) { fs.writeFileSync(f + '.partial', out); fs.renameSync(f + '.partial', f); n++; }
}
console.log(n);
JS
  n="$(cat "$LOG.n")"; rm -f "$LOG.n"
  [ "$n" = 0 ] || NOTE="; patched $n dist files for Node >= 23"
}

# Import the package from the repo, run real ops (matMul goes through the patched code) and
# require the backend to be "tensorflow".
verify() {
  local out
  out="$(cd "$REPO" && TF_CPP_MIN_LOG_LEVEL=2 node -e "
    import('@tensorflow/tfjs-node').then((tf) => {
      const s = tf.matMul(tf.ones([2, 3]), tf.ones([3, 2])).sum().dataSync()[0];
      const k = tf.topk(tf.tensor1d([1, 3, 2])).values.dataSync()[0];
      if (s !== 12 || k !== 3) throw new Error('wrong results: matMul sum ' + s + ', topk ' + k);
      console.log(tf.getBackend());
    })" 2>>"$LOG")" \
    || fail_log "importing/using @tensorflow/tfjs-node failed"
  [ "$(printf '%s\n' "$out" | tail -n 1)" = tensorflow ] \
    || fail_log "@tensorflow/tfjs-node loaded but its backend is '$out', not 'tensorflow'"
}

deps_ok() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -f "$BINDING" ] &&
    [ -e "$DEPS/lib/libtensorflow.so.2.9.1" ] && [ -e "$DEPS/lib/libtensorflow_framework.so.2" ] &&
    [ -f "$DEPS/include/tensorflow/c/c_api.h" ]
}

# --- 0. already provisioned? ---------------------------------------------------------------
if [ "$FORCE" != 1 ] && deps_ok; then
  patch_dist
  verify
  rm -f "$LOG"
  echo "tfjs-native: already provisioned ($ADDON_KEY$NOTE), backend ok in $(elapsed)"
  exit 0
fi

# --- 1. libtensorflow from the tensorflow-cpu wheel, cached per TF version ------------------
tf_action="cached"
if [ ! -f "$TF_DIR/.complete" ] || [ ! -f "$TF_DIR/lib/libtensorflow_cc.so.2" ] ||
   [ ! -f "$TF_DIR/lib/libtensorflow_framework.so.2" ]; then
  tf_action="downloaded"
  command -v python3 >/dev/null || die "python3 (with pip) is needed to fetch the tensorflow-cpu wheel"
  WORK="$(mktemp -d "$CACHE/tf-dl.XXXXXX")"
  printf 'tensorflow-cpu==%s --hash=sha256:%s\n' "$TF_VERSION" "$TF_WHEEL_SHA256" >"$WORK/req.txt"
  python3 -m pip download --no-deps --only-binary=:all: --platform "$TF_WHEEL_PLATFORM" \
      --python-version 3.11 --require-hashes -r "$WORK/req.txt" -d "$WORK/wheel" >>"$LOG" 2>&1 \
    || fail_log "pip download tensorflow-cpu==$TF_VERSION failed"
  whl=("$WORK"/wheel/tensorflow_cpu-*.whl)
  [ -f "${whl[0]}" ] || fail_log "pip produced no tensorflow_cpu wheel"
  echo "$TF_WHEEL_SHA256  ${whl[0]}" | sha256sum -c --quiet - >>"$LOG" 2>&1 \
    || fail_log "sha256 mismatch for ${whl[0]##*/}"
  python3 - "${whl[0]}" "$WORK/tf" >>"$LOG" 2>&1 <<'EOF' || fail_log "extracting the wheel failed"
import os, shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
libs = {"tensorflow/libtensorflow_cc.so.2", "tensorflow/libtensorflow_framework.so.2"}
inc = "tensorflow/include/"
keep = ("tensorflow/c/", "tensorflow/tsl/c/", "tensorflow/tsl/platform/",
        "tensorflow/core/platform/ctstring")
found = set()
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = info.filename
        if name.endswith("/"):
            continue
        if name in libs:
            dest = os.path.join(out, "lib", os.path.basename(name))
            found.add(name)
        elif name.startswith(inc) and name[len(inc):].startswith(keep):
            dest = os.path.join(out, "include", name[len(inc):])
        else:
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
missing = libs - found
if missing:
    sys.exit(f"wheel lacks {sorted(missing)}")
for h in ("c/c_api.h", "c/eager/c_api.h", "core/platform/ctstring.h", "tsl/c/tsl_status.h"):
    if not os.path.isfile(os.path.join(out, "include/tensorflow", h)):
        sys.exit(f"wheel lacks header tensorflow/{h}")
EOF
  nm -D --defined-only "$WORK/tf/lib/libtensorflow_cc.so.2" >"$WORK/syms" 2>>"$LOG" \
    || fail_log "cannot read the symbols of libtensorflow_cc.so.2 (nm, from binutils, is needed)"
  for s in TF_NewTensor TF_Version TFE_NewContext TFE_Execute; do
    grep -Eq " T $s(@@.*)?$" "$WORK/syms" \
      || fail_log "libtensorflow_cc.so.2 from tensorflow-cpu==$TF_VERSION does not export $s"
  done
  chmod a-w "$WORK"/tf/lib/*.so.2             # hard-linked into node_modules below: keep intact
  echo "tensorflow-cpu==$TF_VERSION sha256=$TF_WHEEL_SHA256" >"$WORK/tf/.complete"
  rm -rf "$TF_DIR" && mv "$WORK/tf" "$TF_DIR"
  rm -rf "$WORK"; WORK=""
fi

# --- 2. deps/ laid out as the package expects ----------------------------------------------
# binding.gyp links -ltensorflow -ltensorflow_framework from deps/lib (rpath $ORIGIN/../../deps/lib);
# the linked SONAMEs are libtensorflow_cc.so.2 / libtensorflow_framework.so.2, so those must be
# there too. install.js only rebuilds (never downloads) when deps/lib/libtensorflow.so.2.9.1 exists.
link_or_copy() { ln -f "$1" "$2" 2>/dev/null || cp --reflink=auto "$1" "$2"; }
rm -rf "$DEPS.partial"
mkdir -p "$DEPS.partial/lib"
cp -R "$TF_DIR/include" "$DEPS.partial/include"
link_or_copy "$TF_DIR/lib/libtensorflow_cc.so.2" "$DEPS.partial/lib/libtensorflow_cc.so.2"
link_or_copy "$TF_DIR/lib/libtensorflow_framework.so.2" "$DEPS.partial/lib/libtensorflow_framework.so.2"
ln -s libtensorflow_cc.so.2 "$DEPS.partial/lib/libtensorflow.so"
ln -s libtensorflow_cc.so.2 "$DEPS.partial/lib/libtensorflow.so.2"
ln -s libtensorflow_cc.so.2 "$DEPS.partial/lib/libtensorflow.so.2.9.1"
ln -s libtensorflow_framework.so.2 "$DEPS.partial/lib/libtensorflow_framework.so"
ln -s libtensorflow_framework.so.2 "$DEPS.partial/lib/libtensorflow_framework.so.2.9.1"
rm -rf "$DEPS" && mv "$DEPS.partial" "$DEPS"
# A tf-lib entry makes the package's install.js build from source instead of downloading.
printf '{\n  "tf-lib": "file://%s"\n}\n' "$TF_DIR" >"$PKG/scripts/custom-binary.json"

# --- 3. the addon: restore from cache, or build against the pinned Node's headers -----------
if [ "$FORCE" != 1 ] && [ -f "$ADDON_DIR/tfjs_binding.node" ]; then
  addon_action="restored addon from cache"
  mkdir -p "$(dirname "$BINDING")"
  cp "$ADDON_DIR/tfjs_binding.node" "$BINDING.partial" && mv -f "$BINDING.partial" "$BINDING"
else
  addon_action="built addon"
  command -v make >/dev/null && command -v g++ >/dev/null || die "building the addon needs make and g++"
  command -v python3 >/dev/null || die "building the addon needs python3 (node-gyp)"
  gyp=""
  for c in "${npm_config_node_gyp:-}" "$REPO/node_modules/node-gyp/bin/node-gyp.js" \
           "$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")/node_modules/node-gyp/bin/node-gyp.js" \
           "$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js" \
           "$CACHE/node-gyp/node_modules/node-gyp/bin/node-gyp.js"; do
    if [ -n "$c" ] && [ -f "$c" ]; then gyp="$c"; break; fi
  done
  if [ -z "$gyp" ]; then                     # last resort: a private copy in the cache
    npm install --silent --no-save --no-audit --no-fund --prefix "$CACHE/node-gyp" node-gyp@12 >>"$LOG" 2>&1 \
      || fail_log "node-gyp not found and 'npm install node-gyp' failed"
    gyp="$CACHE/node-gyp/node_modules/node-gyp/bin/node-gyp.js"
  fi
  pregyp="$(node -p "require.resolve('@mapbox/node-pre-gyp/bin/node-pre-gyp',{paths:['$PKG']})")"
  rm -f "$BINDING"
  ( cd "$PKG" &&
    npm_config_nodedir="$NODE_DIR" npm_config_node_gyp="$gyp" JOBS=max \
      node "$pregyp" install --build-from-source ) >>"$LOG" 2>&1 \
    || fail_log "building tfjs_binding.node failed"
  [ -f "$BINDING" ] || fail_log "build finished but $BINDING is missing"
  ldd_out="$(ldd "$BINDING" 2>&1)" || true
  case "$ldd_out" in
    *"not found"*) echo "$ldd_out" >>"$LOG"; fail_log "$BINDING has unresolved libraries" ;;
  esac
  rm -rf "$PKG/build"                          # intermediates; the addon is in lib/napi-v*/
  mkdir -p "$ADDON_DIR"
  cp "$BINDING" "$ADDON_DIR/tfjs_binding.node.partial"
  mv -f "$ADDON_DIR/tfjs_binding.node.partial" "$ADDON_DIR/tfjs_binding.node"
fi
patch_dist

# --- 4. check, then stamp (so a failed check is never taken for a finished provisioning) ------
verify
echo "$STAMP_TEXT" >"$STAMP"
rm -f "$LOG"
echo "tfjs-native: $addon_action ($ADDON_KEY; libtensorflow $tf_action from tensorflow-cpu wheel$NOTE), backend ok in $(elapsed)"
