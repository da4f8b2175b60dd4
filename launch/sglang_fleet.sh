#!/usr/bin/env bash
# Starts the inference fleet: SGLang servers for the teacher and for the student on GPU hosts
# (optionally an sglang_router in front of each role), waits until every server answers
# /health_generate, and prints the endpoints in the form a config takes.
#
# Hosts named localhost / 127.0.0.1 are started here; any other host through ssh. Servers are
# spread over the hosts round-robin, each on its own slice of GPUs (CUDA_VISIBLE_DEVICES), and
# keep running after this script exits (nohup); the script prints how to stop them.
#
# Written for bash 3.2 too (macOS laptops): no mapfile, no associative arrays, no empty-array
# expansion under set -u.
set -euo pipefail

readonly PROG="${0##*/}"

usage() {
  cat <<EOF
usage: $PROG [--teacher-model M] [--student-model DIR] [--teacher-servers N] [--student-servers N]
       [--teacher-tp G] [--student-tp G] [--hosts H1,H2,...] [--gpus-per-host N]
       [--teacher-port P] [--student-port P] [--router] [--router-port P] [--sidecar-port P]
       [--python PY]
       [--log-dir DIR] [--context-length N] [--timeout S] [--poll S] [--dry-run]
       [-- SERVER_ARGS...]

Starts 'PY -m sglang.launch_server --model-path M --host 0.0.0.0 --port P --tp-size G SERVER_ARGS'
per server and prints, once all are healthy:
  teacher_endpoints=http://h:p,...   student_endpoints=http://h:p,...
With --router each role gets one 'PY -m sglang_router.launch_router' on the first host, its
endpoint is the router, and teacher_workers= / student_workers= list the servers themselves
(weight reloads must reach every worker, not the router). With --sidecar-port each student
server gets an export sidecar on its host ('PY -m dagger_jax.rollout.export_sidecar'), which
copies each export from the run's bucket to that host before the server loads it, and
student_loaders= lists them (a gs:// workdir: the trainer and the fleet share no disk).

  --teacher-model M     teacher model (HF id or path on the hosts), e.g.
                        Qwen/Qwen3-Coder-30B-A3B-Instruct
  --student-model DIR   exported student (HF safetensors dir, same path on every host)
                        (at least one of the two is required)
  --teacher-servers N   teacher servers (default 1)
  --student-servers N   student servers (default 1)
  --teacher-tp G        GPUs per teacher server, SGLang --tp-size (default 1)
  --student-tp G        GPUs per student server (default 1)
  --hosts LIST          comma-separated GPU hosts (default 127.0.0.1); others than
                        localhost/127.0.0.1 are reached with ssh
  --gpus-per-host N     GPUs on each host (default 8)
  --teacher-port P      first teacher port; server k listens on P+k (default 30000)
  --student-port P      first student port (default 31000)
  --router              put sglang_router in front of each role (cache-aware routing)
  --router-port P       teacher router port; the student router uses P+1 (default 32000)
  --sidecar-port P      start an export sidecar beside student server k on port P+k (needs
                        dagger_jax installed on the hosts: pip install -e '.[fleet]'); copies
                        go to LOG_DIR/exports
  --python PY           python with sglang installed, on the hosts (default python)
  --log-dir DIR         server logs, same path on every host (default /tmp/sglang_fleet)
  --context-length N    SGLang --context-length for every server: the run's context (the
                        paper: 65536). Default: each model's max_position_embeddings; a
                        student export carries the run's (and its YaRN rope_scaling, which
                        SGLang reads from the export's config.json)
  --timeout S           seconds to wait for all servers to be healthy (default 1800)
  --poll S              seconds between health checks (default 5)
  --dry-run             print the commands (shell-quoted) and the endpoints; run nothing
  -h, --help            this message

Install on the GPU hosts: pip install -e '.[fleet]'  (or sglang[srt] and sglang-router).
EOF
}

die_usage() {
  printf '%s: %s\n' "$PROG" "$1" >&2
  usage >&2
  exit 2
}

die() {
  printf '%s: %s\n' "$PROG" "$1" >&2
  exit 1
}

# A command as a person would paste it (and as the remote shell reads it): plain words bare,
# the rest in single quotes.
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

teacher_model="" student_model="" teacher_servers=1 student_servers=1 teacher_tp=1 student_tp=1
hosts_csv="127.0.0.1" gpus_per_host=8 teacher_port=30000 student_port=31000
router=0 router_port=32000 python_bin="python" log_dir="/tmp/sglang_fleet"
timeout_s=1800 poll_s=5 dry_run=0 context_length="" sidecar_port=""
server_args=()

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
    --teacher-model|--teacher-model=*) flag_value --teacher-model "$@"; teacher_model="$value" ;;
    --student-model|--student-model=*) flag_value --student-model "$@"; student_model="$value" ;;
    --teacher-servers|--teacher-servers=*) flag_value --teacher-servers "$@"; teacher_servers="$value" ;;
    --student-servers|--student-servers=*) flag_value --student-servers "$@"; student_servers="$value" ;;
    --teacher-tp|--teacher-tp=*) flag_value --teacher-tp "$@"; teacher_tp="$value" ;;
    --student-tp|--student-tp=*) flag_value --student-tp "$@"; student_tp="$value" ;;
    --hosts|--hosts=*) flag_value --hosts "$@"; hosts_csv="$value" ;;
    --gpus-per-host|--gpus-per-host=*) flag_value --gpus-per-host "$@"; gpus_per_host="$value" ;;
    --teacher-port|--teacher-port=*) flag_value --teacher-port "$@"; teacher_port="$value" ;;
    --student-port|--student-port=*) flag_value --student-port "$@"; student_port="$value" ;;
    --router-port|--router-port=*) flag_value --router-port "$@"; router_port="$value" ;;
    --sidecar-port|--sidecar-port=*) flag_value --sidecar-port "$@"; sidecar_port="$value" ;;
    --python|--python=*) flag_value --python "$@"; python_bin="$value" ;;
    --log-dir|--log-dir=*) flag_value --log-dir "$@"; log_dir="$value" ;;
    --timeout|--timeout=*) flag_value --timeout "$@"; timeout_s="$value" ;;
    --poll|--poll=*) flag_value --poll "$@"; poll_s="$value" ;;
    --context-length|--context-length=*) flag_value --context-length "$@"; context_length="$value" ;;
    --router) router=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; server_args=("$@"); break ;;
    *) die_usage "unknown argument '$1' (server flags go after '--')" ;;
  esac
  shift "$shift_by"
done

# ---------------------------------------------------------------------------------------------
# Validate.
# ---------------------------------------------------------------------------------------------
is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "teacher-servers:$teacher_servers" "student-servers:$student_servers" \
            "teacher-tp:$teacher_tp" "student-tp:$student_tp" "gpus-per-host:$gpus_per_host" \
            "teacher-port:$teacher_port" "student-port:$student_port" \
            "router-port:$router_port" "timeout:$timeout_s"; do
  is_count "${pair#*:}" || die_usage "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
[[ "$poll_s" =~ ^[0-9]+([.][0-9]+)?$ ]] || die_usage "--poll must be a number of seconds, got '$poll_s'"
[ -z "$sidecar_port" ] || is_count "$sidecar_port" \
  || die_usage "--sidecar-port must be a non-negative integer, got '$sidecar_port'"
[ -z "$context_length" ] || [[ "$context_length" =~ ^[1-9][0-9]*$ ]] \
  || die_usage "--context-length must be a positive integer, got '$context_length'"
for pair in "teacher-tp:$teacher_tp" "student-tp:$student_tp" "gpus-per-host:$gpus_per_host"; do
  [ "${pair#*:}" -ge 1 ] || die_usage "--${pair%%:*} must be at least 1"
done
[ -n "$teacher_model" ] || teacher_servers=0
[ -n "$student_model" ] || student_servers=0
[ -n "$teacher_model$student_model" ] || die_usage "give --teacher-model and/or --student-model"
if [ -n "$teacher_model" ] && [ "$teacher_servers" -eq 0 ]; then
  die_usage "--teacher-servers must be at least 1 with --teacher-model"
fi
if [ -n "$student_model" ] && [ "$student_servers" -eq 0 ]; then
  die_usage "--student-servers must be at least 1 with --student-model"
fi
if [ -n "$sidecar_port" ] && [ "$student_servers" -eq 0 ]; then
  die_usage "--sidecar-port serves student servers: give --student-model"
fi

# Port ranges of the roles and routers must not overlap (servers may share a host).
ranges_overlap() {  # start1 count1 start2 count2
  [ "$2" -gt 0 ] && [ "$4" -gt 0 ] && [ "$1" -lt $(($3 + $4)) ] && [ "$3" -lt $(($1 + $2)) ]
}
n_routers=0
[ "$router" = 0 ] || n_routers=2
n_sidecars=0 sidecar_first="${sidecar_port:-0}"
[ -z "$sidecar_port" ] || n_sidecars="$student_servers"
if ranges_overlap "$teacher_port" "$teacher_servers" "$student_port" "$student_servers" ||
   ranges_overlap "$teacher_port" "$teacher_servers" "$router_port" "$n_routers" ||
   ranges_overlap "$student_port" "$student_servers" "$router_port" "$n_routers" ||
   ranges_overlap "$sidecar_first" "$n_sidecars" "$teacher_port" "$teacher_servers" ||
   ranges_overlap "$sidecar_first" "$n_sidecars" "$student_port" "$student_servers" ||
   ranges_overlap "$sidecar_first" "$n_sidecars" "$router_port" "$n_routers"; then
  die_usage "port ranges overlap: teacher $teacher_port+$teacher_servers, student $student_port+$student_servers, routers $router_port+$n_routers, sidecars $sidecar_first+$n_sidecars"
fi

hosts=()
IFS=',' read -r -a raw_hosts <<< "$hosts_csv"
for h in ${raw_hosts[@]+"${raw_hosts[@]}"}; do
  h="${h// /}"
  [ -z "$h" ] || hosts+=("$h")
done
[ "${#hosts[@]}" -gt 0 ] || die_usage "--hosts lists no host"

is_local() {
  case "$1" in localhost|127.0.0.1) return 0 ;; *) return 1 ;; esac
}

# ---------------------------------------------------------------------------------------------
# Placement: each server gets a host (round-robin, skipping full hosts) and GPU ids there.
# ---------------------------------------------------------------------------------------------
next_gpu=()
for _ in "${hosts[@]}"; do next_gpu+=(0); done
srv_role=() srv_host=() srv_port=() srv_gpus=() srv_model=() srv_tp=()
rr=0

place() {  # role model count tp first_port
  local role="$1" model="$2" count="$3" tp="$4" port0="$5" k j h found gpus g
  for ((k = 0; k < count; k++)); do
    found=""
    for ((j = 0; j < ${#hosts[@]}; j++)); do
      h=$(((rr + j) % ${#hosts[@]}))
      if [ $((next_gpu[h] + tp)) -le "$gpus_per_host" ]; then found="$h"; break; fi
    done
    if [ -z "$found" ]; then
      die "not enough GPUs: $teacher_servers teacher x $teacher_tp + $student_servers student x $student_tp GPUs do not fit on ${#hosts[@]} host(s) x $gpus_per_host GPUs"
    fi
    gpus=""
    for ((g = next_gpu[found]; g < next_gpu[found] + tp; g++)); do gpus="${gpus:+$gpus,}$g"; done
    next_gpu[found]=$((next_gpu[found] + tp))
    rr=$((found + 1))
    srv_role+=("$role") srv_host+=("${hosts[found]}") srv_port+=($((port0 + k)))
    srv_gpus+=("$gpus") srv_model+=("$model") srv_tp+=("$tp")
  done
}
[ "$teacher_servers" -eq 0 ] || place teacher "$teacher_model" "$teacher_servers" "$teacher_tp" "$teacher_port"
[ "$student_servers" -eq 0 ] || place student "$student_model" "$student_servers" "$student_tp" "$student_port"
n_servers=${#srv_role[@]}

url_of() { printf 'http://%s:%s' "$1" "$2"; }

role_urls() {  # role -> comma-separated server URLs
  local role="$1" out="" i
  for ((i = 0; i < n_servers; i++)); do
    [ "${srv_role[i]}" = "$role" ] || continue
    out="${out:+$out,}$(url_of "${srv_host[i]}" "${srv_port[i]}")"
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------------------------------------
# Launching: local hosts directly, others through ssh; each process's pid is kept for cleanup.
# ---------------------------------------------------------------------------------------------
launched_host=() launched_pid=() launched_log=() launched_url=()

# Runs "nohup ARGV > LOG 2>&1 &" on HOST and records its pid.
launch() {  # host log url argv...
  local host="$1" log="$2" url="$3" pid remote
  shift 3
  local dir="${log%/*}"
  if is_local "$host"; then
    if [ "$dry_run" = 1 ]; then
      printf 'mkdir -p %s && nohup %s > %s 2>&1 < /dev/null &\n' \
        "$(display_words "$dir")" "$(display_words "$@")" "$(display_words "$log")"
      return
    fi
    mkdir -p "$dir"
    nohup "$@" > "$log" 2>&1 < /dev/null &
    pid=$!
  else
    remote="mkdir -p $(display_words "$dir") && { nohup $(display_words "$@") > $(display_words "$log") 2>&1 < /dev/null & echo \$!; }"
    if [ "$dry_run" = 1 ]; then
      printf '%s\n' "$(display_words ssh "$host" "$remote")"
      return
    fi
    pid="$(ssh "$host" "$remote")" || die "ssh $host failed to start: $*"
    pid="${pid//[!0-9]/}"
  fi
  printf '+ [%s pid %s] %s\n' "$host" "$pid" "$(display_words "$@")" >&2
  launched_host+=("$host") launched_pid+=("$pid") launched_log+=("$log") launched_url+=("$url")
}

stop_launched() {
  local i
  for ((i = 0; i < ${#launched_pid[@]}; i++)); do
    if is_local "${launched_host[i]}"; then
      kill "${launched_pid[i]}" 2>/dev/null || true
    else
      ssh "${launched_host[i]}" "kill ${launched_pid[i]}" 2>/dev/null || true
    fi
  done
}

log_tail() {  # index -> last lines of its log (local hosts only)
  if is_local "${launched_host[$1]}" && [ -f "${launched_log[$1]}" ]; then
    tail -n 20 "${launched_log[$1]}" | sed 's/^/    | /' >&2
  else
    printf '    (log: %s:%s)\n' "${launched_host[$1]}" "${launched_log[$1]}" >&2
  fi
}

if [ "$dry_run" = 0 ] && ! command -v curl >/dev/null 2>&1; then
  die "curl not found on PATH (needed to wait for /health_generate)"
fi

# Commands for servers; routers come after their workers are healthy (a router started
# before its workers answer drops them).
for ((i = 0; i < n_servers; i++)); do
  role="${srv_role[i]}"
  cmd=(env "CUDA_VISIBLE_DEVICES=${srv_gpus[i]}" "$python_bin" -m sglang.launch_server
       --model-path "${srv_model[i]}" --host 0.0.0.0 --port "${srv_port[i]}" --tp-size "${srv_tp[i]}")
  if [ -n "$context_length" ]; then cmd+=(--context-length "$context_length"); fi
  if [ "${#server_args[@]}" -gt 0 ]; then cmd+=("${server_args[@]}"); fi
  launch "${srv_host[i]}" "$log_dir/$role-${srv_port[i]}.log" \
    "$(url_of "${srv_host[i]}" "${srv_port[i]}")" "${cmd[@]}"
done

# Polls /health_generate on launched processes first..last-1 until each answers 200; fails
# fast when a local process has exited, and at the deadline.
wait_healthy() {  # first last
  local first="$1" last="$2" deadline=$((SECONDS + timeout_s)) pending i status
  status=()
  for ((i = first; i < last; i++)); do status[i]=0; done
  while :; do
    pending=0
    for ((i = first; i < last; i++)); do
      [ "${status[i]}" = 0 ] || continue
      if curl -sf -o /dev/null --max-time 30 "${launched_url[i]}/health_generate"; then
        status[i]=1
        printf '%s: healthy: %s\n' "$PROG" "${launched_url[i]}" >&2
        continue
      fi
      if is_local "${launched_host[i]}" && ! kill -0 "${launched_pid[i]}" 2>/dev/null; then
        printf '%s: %s exited before it was healthy; last lines of %s:\n' \
          "$PROG" "${launched_url[i]}" "${launched_log[i]}" >&2
        log_tail "$i"
        stop_launched
        exit 1
      fi
      pending=$((pending + 1))
    done
    [ "$pending" -gt 0 ] || return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s: timed out after %ss; not healthy:\n' "$PROG" "$timeout_s" >&2
      for ((i = first; i < last; i++)); do
        if [ "${status[i]}" = 0 ]; then
          printf '  %s\n' "${launched_url[i]}" >&2
          log_tail "$i"
        fi
      done
      stop_launched
      exit 1
    fi
    sleep "$poll_s"
  done
}

# Interrupted while waiting: take down what this run started rather than leave it half up.
trap 'stop_launched; exit 130' INT TERM
[ "$dry_run" = 1 ] || wait_healthy 0 "${#launched_pid[@]}"

teacher_workers="$(role_urls teacher)" student_workers="$(role_urls student)"
teacher_endpoints="$teacher_workers" student_endpoints="$student_workers"
if [ "$router" = 1 ]; then
  first_router=${#launched_pid[@]}
  rhost="${hosts[0]}"
  for role in teacher student; do
    if [ "$role" = teacher ]; then workers="$teacher_workers" port="$router_port"
    else workers="$student_workers" port=$((router_port + 1)); fi
    [ -n "$workers" ] || continue
    IFS=',' read -r -a worker_list <<< "$workers"
    launch "$rhost" "$log_dir/$role-router-$port.log" "$(url_of "$rhost" "$port")" \
      "$python_bin" -m sglang_router.launch_router --host 0.0.0.0 --port "$port" \
      --worker-urls "${worker_list[@]}"
    if [ "$role" = teacher ]; then teacher_endpoints="$(url_of "$rhost" "$port")"
    else student_endpoints="$(url_of "$rhost" "$port")"; fi
  done
  [ "$dry_run" = 1 ] || wait_healthy "$first_router" "${#launched_pid[@]}"
fi

# Export sidecars beside the student servers, once those answer (a sidecar's health is its
# server's): each on its server's host, talking to it over loopback.
student_loaders=""
if [ -n "$sidecar_port" ]; then
  first_sidecar=${#launched_pid[@]}
  k=0
  for ((i = 0; i < n_servers; i++)); do
    [ "${srv_role[i]}" = student ] || continue
    sport=$((sidecar_port + k))
    k=$((k + 1))
    surl="$(url_of "${srv_host[i]}" "$sport")"
    launch "${srv_host[i]}" "$log_dir/student-sidecar-$sport.log" "$surl" \
      "$python_bin" -m dagger_jax.rollout.export_sidecar --host 0.0.0.0 --port "$sport" \
      --server "$(url_of 127.0.0.1 "${srv_port[i]}")" --cache "$log_dir/exports"
    student_loaders="${student_loaders:+$student_loaders,}$surl"
  done
  [ "$dry_run" = 1 ] || wait_healthy "$first_sidecar" "${#launched_pid[@]}"
fi

trap - INT TERM

# The result, on stdout, one config line per role.
if [ -n "$teacher_workers" ]; then
  printf 'teacher_endpoints=%s\n' "$teacher_endpoints"
  [ "$router" = 0 ] || printf 'teacher_workers=%s\n' "$teacher_workers"
fi
if [ -n "$student_workers" ]; then
  printf 'student_endpoints=%s\n' "$student_endpoints"
  [ "$router" = 0 ] || printf 'student_workers=%s\n' "$student_workers"
  [ -z "$student_loaders" ] || printf 'student_loaders=%s\n' "$student_loaders"
fi
if [ "$dry_run" = 0 ]; then
  for ((i = 0; i < ${#launched_pid[@]}; i++)); do
    if is_local "${launched_host[i]}"; then
      printf '%s: stop %s with: kill %s\n' "$PROG" "${launched_url[i]}" "${launched_pid[i]}" >&2
    else
      printf '%s: stop %s with: ssh %s kill %s\n' "$PROG" "${launched_url[i]}" \
        "${launched_host[i]}" "${launched_pid[i]}" >&2
    fi
  done
fi
