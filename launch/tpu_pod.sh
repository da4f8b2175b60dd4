#!/usr/bin/env bash
# Runs the dagger_jax trainer on every worker of a Cloud TPU VM pod.
#
# Each worker runs the same command; the program calls jax.distributed.initialize(), which on a
# TPU pod finds its peers from the TPU metadata. A TPU chip can be held by one process only, so
# any trainer left over from an earlier launch is killed first.
#
# Written for bash 3.2 too (macOS laptops): no mapfile, no empty-array expansion under set -u.
set -euo pipefail

readonly PROG="${0##*/}"
readonly REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Matches the trainer's own command line (argv[0] a python, then -m dagger_jax.main) and not a
# shell whose -c script merely mentions it: a bare `pkill -f dagger_jax.main` would kill the
# remote shell running this very launch.
readonly TRAINER_PATTERN='^[^ ]*python[0-9.]* -m dagger_jax[.]main'
readonly REMOTE_TARBALL='dagger_jax_src.tar.gz'  # relative to the remote home directory

usage() {
  cat <<EOF
usage: $PROG --tpu NAME --zone ZONE --workdir W [--project P] [--config FILE]
       [--repo-dir DIR] [--sync] [--extras LIST] [--python PY] [--dry-run] [-- TRAINER_ARGS...]

Runs 'python -m dagger_jax.main --config=FILE --workdir=W TRAINER_ARGS' on all workers of a TPU VM.

  --tpu NAME        TPU VM name (required)
  --zone ZONE       its zone, e.g. us-central2-b (required)
  --workdir W       trainer workdir; gs://... so every worker sees the same one (required)
  --project P       GCP project (default: gcloud's configured project)
  --config FILE     config file, relative to the repo (default: configs/qwen3_8b.py)
  --repo-dir DIR    repo checkout on the workers, relative to the remote home (default: dagger_jax)
  --sync            copy this repo's files (git-tracked plus untracked, not ignored) to all
                    workers, then create DIR/.venv and 'pip install -e .' there; the install
                    is skipped when the venv was already set up for the same pyproject.toml
  --extras LIST     with --sync: install '.[LIST]' (default: tpu, JAX with libtpu; '' for
                    plain '.', which is CPU JAX: the trainer then refuses a pod config)
  --python PY       with --sync: interpreter that creates the venv (default: python3)
  --dry-run         print the gcloud commands (shell-quoted) and run nothing
  -h, --help        this message

Each worker logs to DIR/logs/train-<run id>-<hostname>.log; output is also streamed here.
EOF
}

die_usage() {
  printf '%s: %s\n' "$PROG" "$1" >&2
  usage >&2
  exit 2
}

# One shell word per argument, for the remote shell to read back (bash's %q: backslashes).
quote_words() {
  local out="" arg word
  for arg in "$@"; do
    if [ -z "$arg" ]; then word="''"; else word="$(printf '%q' "$arg")"; fi
    out="${out:+$out }$word"
  done
  printf '%s' "$out"
}

# A command as a person would paste it: plain words bare, the rest in single quotes. Differs
# from quote_words so that the --command value, already backslash-quoted, prints readably.
display_words() {
  local out="" arg word sq="'\\''"
  for arg in "$@"; do
    case "$arg" in
      "" | *[!A-Za-z0-9_./:=@%+,-]*) word="'${arg//\'/$sq}'" ;;
      *) word="$arg" ;;
    esac
    out="${out:+$out }$word"
  done
  printf '%s' "$out"
}

tpu="" zone="" project="" config="configs/qwen3_8b.py" workdir="" repo_dir="dagger_jax"
extras="tpu" python_bin="python3" sync=0 dry_run=0
trainer_args=()

# Value of a flag given as `--flag VALUE` or `--flag=VALUE`; sets `shift_by` for the caller.
flag_value() {
  local flag="$1" current="$2"
  shift 2
  if [[ "$current" == *=* ]]; then
    value="${current#*=}"
    shift_by=1
  elif [ "$#" -ge 1 ] && [[ "$1" != --* ]]; then
    value="$1"
    shift_by=2
  else
    die_usage "$flag needs a value"
  fi
}

while [ "$#" -gt 0 ]; do
  value="" shift_by=1
  case "$1" in
    --tpu|--tpu=*) flag_value --tpu "$@"; tpu="$value" ;;
    --zone|--zone=*) flag_value --zone "$@"; zone="$value" ;;
    --project|--project=*) flag_value --project "$@"; project="$value" ;;
    --config|--config=*) flag_value --config "$@"; config="$value" ;;
    --workdir|--workdir=*) flag_value --workdir "$@"; workdir="$value" ;;
    --repo-dir|--repo-dir=*) flag_value --repo-dir "$@"; repo_dir="$value" ;;
    --extras|--extras=*) flag_value --extras "$@"; extras="$value" ;;
    --python|--python=*) flag_value --python "$@"; python_bin="$value" ;;
    --sync) sync=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; trainer_args=("$@"); break ;;
    *) die_usage "unknown argument '$1' (trainer flags go after '--')" ;;
  esac
  shift "$shift_by"
done

missing=""
[ -n "$tpu" ] || missing="$missing --tpu"
[ -n "$zone" ] || missing="$missing --zone"
[ -n "$workdir" ] || missing="$missing --workdir"
[ -z "$missing" ] || die_usage "missing required flag(s):$missing"

# The remote shell starts in the home directory; '~/x' typed in quotes would reach it as a
# literal '~', so treat it as the relative path it means.
repo_dir="${repo_dir#\~/}"
case "$workdir" in
  gs://*) ;;
  *) printf '%s: warning: --workdir %s is not gs://; every worker must see the same workdir\n' \
       "$PROG" "$workdir" >&2 ;;
esac

gcloud_target=(--zone="$zone")
[ -z "$project" ] || gcloud_target+=(--project="$project")
gcloud_target+=(--worker=all)

run() {
  if [ "$dry_run" = 1 ]; then
    printf '%s\n' "$(display_words "$@")"
  else
    printf '+ %s\n' "$(display_words "$@")" >&2
    "$@"
  fi
}

remote_ssh() {
  run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_target[@]}" --command="$1"
}

if [ "$dry_run" = 0 ] && ! command -v gcloud >/dev/null 2>&1; then
  printf '%s: gcloud not found on PATH (install the Google Cloud SDK)\n' "$PROG" >&2
  exit 1
fi

q_dir="$(quote_words "$repo_dir")"

# ---------------------------------------------------------------------------------------------
# Sync: pack this checkout, copy it to every worker, unpack, set up the venv.
# ---------------------------------------------------------------------------------------------
if [ "$sync" = 1 ]; then
  tarball_dir=""
  if [ "$dry_run" = 1 ]; then
    tarball="${TMPDIR:-/tmp}/dagger_jax_src.XXXXXX/src.tar.gz"
    printf '# pack the git-tracked and untracked, not ignored files of %s into %s\n' \
      "$REPO_ROOT" "$tarball"
  else
    tarball_dir="$(mktemp -d "${TMPDIR:-/tmp}/dagger_jax_src.XXXXXX")"
    trap 'rm -rf "$tarball_dir"' EXIT
    tarball="$tarball_dir/src.tar.gz"
    # Files deleted in the working tree but still in the index would make tar fail.
    git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard \
      | (cd "$REPO_ROOT" && while IFS= read -r -d '' f; do
           if [ -e "$f" ]; then printf '%s\0' "$f"; fi
         done) \
      | COPYFILE_DISABLE=1 tar -C "$REPO_ROOT" -czf "$tarball" --null -T -
  fi
  run gcloud compute tpus tpu-vm scp --recurse "$tarball" "$tpu:$REMOTE_TARBALL" "${gcloud_target[@]}"

  pip_target="."
  [ -z "$extras" ] || pip_target=".[$extras]"
  q_tarball="$(quote_words "$REMOTE_TARBALL")"
  q_pip_target="$(quote_words "$pip_target")"
  q_python="$(quote_words "$python_bin")"
  # Statements joined by '; ' under set -e: a failing one stops the worker's script.
  setup="set -euo pipefail"
  setup="$setup; mkdir -p $q_dir; tar -xzf $q_tarball -C $q_dir; rm -f $q_tarball; cd $q_dir"
  # The stamp ties an installed venv to its pyproject.toml and extras: same stamp, no install.
  setup="$setup"'; want="$({ cat pyproject.toml 2>/dev/null || true; echo '"$q_pip_target"'; } | sha256sum | cut -d" " -f1)"'
  setup="$setup"'; if [ "$(cat .venv/.tpu_pod_stamp 2>/dev/null || true)" = "$want" ]; then echo "$(hostname): .venv up to date"; else'
  setup="$setup"' if [ ! -x .venv/bin/pip ]; then '"$q_python"' -m venv .venv || { echo "$(hostname): '"$q_python"' -m venv failed (python3-venv not installed?)" >&2; exit 1; }; fi;'
  setup="$setup"' .venv/bin/pip install --quiet --upgrade pip; .venv/bin/pip install --quiet -e '"$q_pip_target"';'
  setup="$setup"' printf "%s\n" "$want" > .venv/.tpu_pod_stamp; echo "$(hostname): .venv installed"; fi'
  remote_ssh "$setup"
fi

# ---------------------------------------------------------------------------------------------
# Train: kill stray trainers, then run on all workers, logging per worker and streaming.
# ---------------------------------------------------------------------------------------------
run_id="$(date -u +%Y%m%d-%H%M%S)"
trainer=(.venv/bin/python -m dagger_jax.main "--config=$config" "--workdir=$workdir")
if [ "${#trainer_args[@]}" -gt 0 ]; then trainer+=("${trainer_args[@]}"); fi
q_pattern="$(quote_words "$TRAINER_PATTERN")"

train="set -euo pipefail; cd $q_dir"
train="$train"'; if [ ! -x .venv/bin/python ]; then echo "$(hostname): $PWD/.venv is missing; launch once with --sync" >&2; exit 1; fi'
train="$train; pat=$q_pattern; pkill -f \"\$pat\" || true"
# Give a killed trainer time to release the TPU before the next one opens it.
train="$train"'; for _ in $(seq 30); do pgrep -f "$pat" >/dev/null || break; sleep 1; done'
train="$train"'; pkill -9 -f "$pat" || true'
train="$train"'; mkdir -p logs; log="logs/train-'"$run_id"'-$(hostname).log"; echo "$(hostname): logging to $PWD/$log"'
train="$train; PYTHONUNBUFFERED=1 $(quote_words "${trainer[@]}")"' 2>&1 | tee -a "$log" | sed -u "s/^/$(hostname): /"'
remote_ssh "$train"
