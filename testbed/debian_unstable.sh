#!/usr/bin/env bash
# Install and smoke-test clapsep on Debian unstable's Python 3.13 and 3.14, in a chroot.
#
#   testbed/debian_unstable.sh [--ref REF] [--source GIT_DIR] [--python X.Y]... [--rebuild] [--build-only] [--keep]
#
# Needs root, debootstrap, chroot and Debian's package registry (and PyPI for pip).
#
# 1. Builds once, and caches, a Debian unstable (sid) root with debootstrap: the Pythons, git, ffmpeg,
#    libsndfile1, and Audacity with Xvfb, xauth, xdotool, x11-apps and ImageMagick for the Audacity
#    tests that share this root, and gcc with libc6-dev (Audacity 4's extension builds a native
#    library). It is rebuilt only when it is missing, when the package list (or the mirror) changes,
#    or with --rebuild.
# 2. For each Python (3.13 and 3.14 unless --python says otherwise): clones this repository at REF
#    (default HEAD: the committed state; --source clones another checkout), downloads the wheels it
#    needs into a cached wheel folder, runs the README's set-up command with that Python (timed; its
#    `clapsep extract` part is run apart, offline, and must refuse in one clear line), imports the
#    package, runs `clapsep --help`, installs the test extra, imports random-weight checkpoints in each
#    of the three official layouts with `clapsep models import`, extracts with each, and runs the CLI
#    smoke tests and the golden/reference tests with pytest (-m "not slow and not e2e").
#    --keep keeps each venv (by default one is removed once all its steps passed).
# 3. Prints a summary per Python and exits non-zero if any step failed.
#
# Environment:
#   CLAPSEP_DEBIAN_ROOT    the cached root (default /var/cache/clapsep/debian-unstable)
#   CLAPSEP_CACHE          the wheel, pip and .deb caches live here (default: the root's parent folder)
#   CLAPSEP_DEBIAN_MIRROR  Debian mirror (default: the first Debian archive in /etc/apt/sources.list*;
#                          the root's apt uses it, ignoring Release files' Valid-Until dates)
#   CLAPSEP_PIP_CERT       certificate bundle pip uses inside the root (default: this machine's pip `cert`)
#
# /proc, /dev (with /dev/pts and /dev/shm), /sys and the caches are mounted into the root only while
# it is used, in a mount namespace of this script's own (so they vanish with it, even on SIGKILL), and
# unmounted on exit too. A log of every step is kept in <root>/srv/clapsep-py<X.Y>/logs/.
# The whole script is one block, so bash has read all of it before it runs: a checkout that rewrites this
# file during a run cannot change what the run does.
{
set -Eeuo pipefail

ARGS=("$@")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${CLAPSEP_DEBIAN_ROOT:-/var/cache/clapsep/debian-unstable}
ROOT=${ROOT%/}
CACHE=${CLAPSEP_CACHE:-$(dirname "$ROOT")}
SUITE=sid
PYTHONS=()
REF=HEAD
SOURCE=$REPO
REBUILD=0
BUILD_ONLY=0
KEEP=0

# Everything the root holds. Changing this list (or the mirror, or ROOT_FORMAT) rebuilds the root.
PACKAGES=(
  python3.13 python3.13-venv python3.14 python3.14-venv
  git ca-certificates ffmpeg libsndfile1
  audacity xvfb xauth xdotool x11-apps imagemagick
  gcc libc6-dev
)
ROOT_FORMAT=1
PIP_ENV=()
PYTEST_FILES=(tests/test_cli_startup.py tests/test_cli_messages.py tests/test_cli_extract.py tests/test_store.py
              tests/test_safety.py)
PYTEST_GLOBS=('tests/test_golden*.py' 'tests/test_stem_golden*.py' 'tests/test_reference*.py')

usage() { sed -n '2,/^# The whole script/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --ref) REF=$2; shift 2 ;;
    --source) SOURCE=$(cd "$2" && pwd); shift 2 ;;
    --python) PYTHONS+=("$2"); shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "debian_unstable.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
((${#PYTHONS[@]})) || PYTHONS=(3.13 3.14)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mount)"
for tool in debootstrap chroot unshare findmnt mount umount git flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap util-linux git)"
done
case $ROOT in /|/usr|/var|/var/cache|/tmp|"$HOME") die "refusing root folder $ROOT" ;; esac

# Run the rest in a private mount namespace: mounts made below are invisible outside and die with it.
if [[ ${_CLAPSEP_DEBIAN_NS:-} != "$$" ]]; then
  # shellcheck disable=SC2016 # $$ is the inner shell's
  exec unshare --mount --propagation private bash -c 'export _CLAPSEP_DEBIAN_NS=$$; exec bash "$0" "$@"' "${BASH_SOURCE[0]}" "${ARGS[@]}"
fi

START=$SECONDS
mkdir -p "$CACHE"
exec 9>"$CACHE/.debian-unstable.lock"
flock -n 9 || { log "another run holds $CACHE/.debian-unstable.lock; waiting"; flock 9; }

# ---------------------------------------------------------------- mounts
mounts_under() {  # mount points at or below $1, deepest first
  findmnt -rn -o TARGET | awk -v r="$1" '$0 == r || index($0, r "/") == 1' | sort -r
}

unmount_all() {  # $1: a root; unmounts everything below it, lazily where busy
  local r=$1 m
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done < <(mounts_under "$r")
  [[ -z $(mounts_under "$r") ]]
}

kill_in_root() {  # processes whose root is $1 (ones this run left, e.g. a test's service): TERM, then KILL
  local r=$1 pid sig
  for sig in TERM KILL; do
    for pid in /proc/[0-9]*; do
      pid=${pid#/proc/}
      if [[ $(readlink "/proc/$pid/root" 2>/dev/null) == "$r" ]]; then kill -s "$sig" "$pid" 2>/dev/null || true; fi
    done
    if [[ $sig == TERM ]]; then sleep 1; fi
  done
  return 0
}

# The registry's file responses carry no caching headers, so pip's own HTTP cache stores nothing, and pip
# prefers the index to a find-links folder for the same file. So each Python's wheels (those of `.[test]`
# and of the build backend) are first downloaded into a cached wheel folder (pip download skips the files
# it holds), and the README's commands then install from that folder alone (PIP_NO_INDEX, PIP_FIND_LINKS).
WHEELS=/var/cache/clapsep-wheels
MOUNTED_ROOTS=()
mount_root() {  # $1: a root to use with chroot
  local r=$1
  MOUNTED_ROOTS+=("$r")
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev" && mount --make-rslave "$r/dev"
  mount --rbind /sys "$r/sys" && mount --make-rslave "$r/sys"
  [[ -d /dev/pts && -z $(mounts_under "$r/dev/pts") ]] && mount --bind /dev/pts "$r/dev/pts"
  [[ -n $(mounts_under "$r/dev/shm") ]] || mount -t tmpfs -o mode=1777 shm "$r/dev/shm"
  mkdir -p "$CACHE/pip" "$r/root/.cache/pip" "$CACHE/wheels" "$r$WHEELS"
  mount --bind "$CACHE/pip" "$r/root/.cache/pip"
  mount --bind "$CACHE/wheels" "$r$WHEELS"
  cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$? r
  for r in "${MOUNTED_ROOTS[@]}"; do
    kill_in_root "$r"
    unmount_all "$r" || log "warning: mounts left under $r"
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

remove_root() {  # $1: a root folder; refuses while anything is mounted below it
  local r=$1
  [[ -e $r ]] || return 0
  unmount_all "$r" || die "mounts left under $r; not removing it"
  rm -rf --one-file-system "$r"
}

# chroot with a clean environment; the rest of the arguments are a bash script
in_root() {
  local r=$1; shift
  chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_FIND_LINKS="$WHEELS" "${PIP_ENV[@]}" /bin/bash -Eeuo pipefail -c "$1"
}

# ---------------------------------------------------------------- the root
mirror() {
  if [[ -n ${CLAPSEP_DEBIAN_MIRROR:-} ]]; then echo "${CLAPSEP_DEBIAN_MIRROR%/}"; return; fi
  local found
  found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ') || true
  [[ -n $found ]] || die "no Debian archive in /etc/apt/sources.list*: set CLAPSEP_DEBIAN_MIRROR"
  echo "${found%/}"
}

MIRROR=$(mirror)
STAMP_TEXT="format=$ROOT_FORMAT
suite=$SUITE
mirror=$MIRROR
packages=${PACKAGES[*]}"
STAMP=.clapsep-root-stamp

build_root() {
  local new=$ROOT.new t0=$SECONDS keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  local gpg=(--keyring="$keyring")
  [[ -r $keyring ]] || { log "no $keyring: not checking Release signatures"; gpg=(--no-check-gpg); }
  log "building a Debian $SUITE root in $new from $MIRROR"
  remove_root "$new"
  mkdir -p "$CACHE/debs"
  # debootstrap checks signatures, not Valid-Until; apt inside is told to ignore Valid-Until below.
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" "${gpg[@]}" "$SUITE" "$new" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$new/etc/apt/sources.list"
  cat >"$new/etc/apt/apt.conf.d/90clapsep" <<'EOF'
// The registry's Release files may be past their Valid-Until date.
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
APT::Get::Assume-Yes "true";
EOF
  printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d" && chmod +x "$new/usr/sbin/policy-rc.d"
  mount_root "$new"
  mkdir -p "$new/var/cache/apt/archives"
  mount --bind "$CACHE/debs" "$new/var/cache/apt/archives"
  in_root "$new" "apt-get update -q && apt-get install -q ${PACKAGES[*]}" >"$CACHE/apt.log" 2>&1 ||
    { tail -n 30 "$CACHE/apt.log" >&2; die "apt-get install in the root failed (log: $CACHE/apt.log)"; }
  kill_in_root "$new"
  unmount_all "$new" || die "mounts left under $new"
  MOUNTED_ROOTS=()
  printf '%s\n' "$STAMP_TEXT" >"$new/$STAMP"
  remove_root "$ROOT"
  mv "$new" "$ROOT"
  log "root built in $((SECONDS - t0)) s ($(du -sh --one-file-system "$ROOT" | cut -f1))"
}

if ((REBUILD)) || [[ ! -f $ROOT/$STAMP ]] || [[ $(cat "$ROOT/$STAMP") != "$STAMP_TEXT" ]]; then
  build_root
else
  log "using the cached root $ROOT"
fi
ROOT_SECONDS=$((SECONDS - START))
((BUILD_ONLY)) && { log "built; --build-only"; exit 0; }

# ---------------------------------------------------------------- pip inside the root
# pip here trusts this machine's bundle (which may hold a proxy's CA); Debian's own bundle inside the root
# would not, so the root's pip is pointed at a copy of it. The host's local wheel folders and its torch cap
# are not reproduced: they hold nothing the project pins differently (torch is pinned exactly).
pip_cert() {
  if [[ -n ${CLAPSEP_PIP_CERT:-} ]]; then echo "$CLAPSEP_PIP_CERT"; return; fi
  local c
  c=$(pip config get global.cert 2>/dev/null || true)
  [[ -n $c ]] || c=${PIP_CERT:-}
  [[ -n $c ]] || c=/etc/ssl/certs/ca-certificates.crt
  echo "$c"
}
CERT=$(pip_cert)
[[ -r $CERT ]] || die "pip's certificate bundle $CERT is not readable"
mkdir -p "$ROOT/etc/clapsep"
cp -L "$CERT" "$ROOT/etc/clapsep/pip-ca.crt"
cat >"$ROOT/etc/pip.conf" <<'EOF'
[global]
cert = /etc/clapsep/pip-ca.crt
default-timeout = 180
disable-pip-version-check = true
EOF
mount_root "$ROOT"

# ---------------------------------------------------------------- one Python
RESULTS=()
FAILED=0

readme_setup() {  # $1 README, $2 X.Y: the README's set-up command for python X.Y; prints "install<TAB>extract"
  local line
  line=$(grep -m1 -E '^python3(\.[0-9]+)? -m venv ' "$1") || return 1
  awk -v line="$line" -v py="python$2" 'BEGIN {
    n = split(line, parts, / && /)
    for (i = 1; i <= n; i++) {
      if (parts[i] ~ /clapsep extract/) { ex = parts[i]; continue }
      if (parts[i] ~ /^python3(\.[0-9]+)? /) sub(/^python3(\.[0-9]+)?/, py, parts[i])
      inst = inst (inst == "" ? "" : " && ") parts[i]
    }
    printf "%s\t%s\n", inst, ex
  }'
}

run_python() {
  local v=$1 t0=$SECONDS
  local top=/srv/clapsep-py$v src=/srv/clapsep-py$v/clapsep
  local host_top=$ROOT$top logs=$ROOT$top/logs
  local failed=() download_s=- install_s=- venv=- pytest_line=- setup install extract

  step() {  # name, script run in the clone inside the root; its output goes to logs/<name>.log
    local name=$1 s0=$SECONDS rc=0
    in_root "$ROOT" "cd $src && $2" >"$logs/$name.log" 2>&1 || rc=$?
    STEP_SECONDS=$((SECONDS - s0))
    if ((rc)) && [[ $name == download ]]; then
      log "py$v $name: warning: failed (exit $rc); the install steps download what they need"
    elif ((rc)); then
      failed+=("$name")
      log "py$v $name: FAILED (exit $rc, $((SECONDS - s0)) s); last lines of $logs/$name.log:"
      tail -n 25 "$logs/$name.log" | sed 's/^/    /' >&2
    else
      log "py$v $name: ok ($((SECONDS - s0)) s)"
    fi
    return "$rc"
  }

  log "=== Python $v"
  remove_root "$host_top"
  mkdir -p "$logs"
  git clone -q "$SOURCE" "$host_top/clapsep" && git -C "$host_top/clapsep" checkout -q --detach "$SHA"
  setup=$(readme_setup "$host_top/clapsep/README.md" "$v") || { failed+=(readme); setup=$'\t'; }
  install=${setup%%$'\t'*} extract=${setup#*$'\t'}
  log "py$v at ${SHA:0:12}; README set-up: $install"

  # Fill the wheel folder (only what it lacks), with a throwaway venv; if that fails, pip uses the index.
  PIP_ENV=()
  if step download "python$v -m venv $top/fetch && $top/fetch/bin/pip download -d $WHEELS '.[test]' hatchling editables
      rm -rf $top/fetch $WHEELS/clapsep_cli-* $WHEELS/clapsep-cli-*"; then
    PIP_ENV=(PIP_NO_INDEX=1)
  fi
  download_s=$STEP_SECONDS
  if [[ -n $install ]] && step install "$install"; then
    install_s=$STEP_SECONDS
    venv=$(du -sh "$host_top/clapsep/.venv" | cut -f1)
    step import '.venv/bin/python -c "import sys, clapsep_cli.api; print(sys.version)"' || true
    step help '.venv/bin/clapsep --help' || true
    if [[ -n $extract ]]; then
      # The README's `clapsep extract` needs the model from the Hub: offline, it must refuse in one clear
      # line (naming the download) and write nothing.
      step readme-extract "export CLAPSEP_HOME=$top/work/empty-home HF_HUB_OFFLINE=1; mkdir -p $top/work
        set +e; $extract >$top/work/readme-extract.out 2>&1; rc=\$?; set -e; cat $top/work/readme-extract.out
        [ \$rc -ne 0 ] && grep -qE 'cannot download|clapsep models download' $top/work/readme-extract.out
        [ -z \"\$(git status --porcelain)\" ]" || true
    fi
    if step test-extra ".venv/bin/pip install -e '.[test]'"; then
      step checkpoints "mkdir -p $top/work && .venv/bin/python - $top/work/ckpt <<'EOF'
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, '.')
from clapsep_cli.network.architecture import ARCHITECTURES  # noqa: E402
from testbed import official  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
cfg = ARCHITECTURES['tiny']
clap = official.random_clap_state(cfg, seed=0)
training = official.random_clapsep_training_state(cfg, clap, seed=1)
official.write_clap(out / 'clap.pt', clap)
official.write_tokenizer(out / 'tok')
for layout in (1, 2, 3):
    official.write_clapsep(out / f'clapsep{layout}.ckpt', training, clap, layout)
rng = np.random.default_rng(0)
t = np.arange(3 * 44100) / 44100
mix = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * rng.standard_normal(t.size)], axis=1)
sf.write(out / 'mix.wav', mix.astype('float32'), 44100)
print(sorted(p.name for p in out.iterdir()))
EOF" || true
      local n
      for n in 1 2 3; do
        step "import-layout$n" "export CLAPSEP_HOME=$top/work/home CLAPSEP_SERVER=never HF_HUB_OFFLINE=1
          .venv/bin/clapsep models import --architecture tiny --name layout$n --clap $top/work/ckpt/clap.pt \
            --clapsep $top/work/ckpt/clapsep$n.ckpt --tokenizer $top/work/ckpt/tok" &&
        step "extract-layout$n" "export CLAPSEP_HOME=$top/work/home CLAPSEP_SERVER=never HF_HUB_OFFLINE=1
          rm -f $top/work/out$n.wav
          .venv/bin/clapsep extract --model layout$n 'dog barking' $top/work/ckpt/mix.wav -o $top/work/out$n.wav
          .venv/bin/python -c 'import soundfile as sf; i = sf.info(\"$top/work/out$n.wav\"); print(i); assert i.frames > 0'" ||
        true
      done
      local files=("${PYTEST_FILES[@]}") g f
      for g in "${PYTEST_GLOBS[@]}"; do
        for f in "$host_top"/clapsep/$g; do [[ -e $f ]] && files+=("${f#"$host_top"/clapsep/}"); done
      done
      step pytest ".venv/bin/python -m pytest -q -p no:cacheprovider --basetemp=$top/work/pytest --durations=5 -m 'not slow and not e2e' ${files[*]}" ||
        true
      pytest_line=$(grep -E '^=*.*[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$logs/pytest.log" |
                    tail -n1 | sed -E 's/^=+ //; s/ =+$//') || true
      [[ -n $pytest_line ]] || pytest_line="(no result line; see $logs/pytest.log)"
    fi
  fi
  kill_in_root "$ROOT"
  ((${#failed[@]})) && FAILED=1
  RESULTS+=("$(printf 'Python %-5s download %4ss  install %4ss  venv %5s  total %4ss  pytest: %s  failed: %s' \
    "$v" "$download_s" "$install_s" "$venv" "$((SECONDS - t0))" "$pytest_line" "${failed[*]:-none}")")
  if ((! KEEP)) && ((! ${#failed[@]})); then rm -rf --one-file-system "$host_top/clapsep/.venv" "$host_top/work"; fi
}

SHA=$(git -C "$SOURCE" rev-parse --verify "$REF^{commit}")  # once: the branch may move during the run
for v in "${PYTHONS[@]}"; do run_python "$v"; done

echo
echo "clapsep on Debian $SUITE ($(cat "$ROOT/etc/debian_version" 2>/dev/null)), $REF = ${SHA:0:12} of $SOURCE:"
printf '  %s\n' "${RESULTS[@]}"
echo "  root: $ROOT_SECONDS s (cached root: $ROOT); whole run: $((SECONDS - START)) s"
((FAILED)) && { echo "FAILED (logs under $ROOT/srv/clapsep-py*/logs)"; exit 1; }
echo "all steps passed"
exit
}
