# shellcheck shell=bash
# Progress of the long build steps of hack/build-cluster-binaries.sh, hack/build-addons.sh and
# hack/images.sh, one step at a time:
#
#   [build-cluster-binaries] [3/9] kube-scheduler: building (log: .../kube-scheduler.log)
#   [build-cluster-binaries] [3/9] kube-scheduler: 30 s (log: .../kube-scheduler.log)
#   [build-cluster-binaries] [3/9] kube-scheduler: done in 42 s
#
# and on failure the last lines of the step's log and the command that retries. Everything goes
# to stderr: stdout carries the scripts' answers (a bin dir, an image tag). On a terminal the
# running line is rewritten in place each second; anywhere else (a pipe, a CI log) each line is
# a plain new line, one every PROGRESS_INTERVAL seconds.

PROGRESS_INTERVAL=${PROGRESS_INTERVAL:-30}
PROGRESS_TAIL=${PROGRESS_TAIL:-25}
# A function that, given the log, names where the step has got to (appended to each line).
PROGRESS_DETAIL=${PROGRESS_DETAIL:-}
# How long the last progress_step took, in seconds.
STEP_SECONDS=0

# progress_step PREFIX INDEX TOTAL NAME LOG RETRY COMMAND [ARGS...]
# Runs COMMAND in a subshell under `set -e`, its output in LOG; when it fails, exits with its
# status. Call it as a command of its own, not after `if`, `&&` or `||`: there bash ignores
# `set -e` in everything the call runs, and a step that fails halfway would carry on.
progress_step() {
    local prefix=$1 index=$2 total=$3 name=$4 log=$5 retry=$6
    shift 6
    local tag="[$index/$total] $name" start=$SECONDS pid rc=0 elapsed shown=0 detail
    local next=$PROGRESS_INTERVAL
    mkdir -p "$(dirname "$log")"
    printf '%s %s: building (log: %s)\n' "$prefix" "$tag" "$log" >&2
    (set -e; "$@") >"$log" 2>&1 </dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.2
        elapsed=$((SECONDS - start))
        if [[ -t 2 ]]; then
            if ((elapsed != shown)); then
                printf '\r%s %s: %d s' "$prefix" "$tag" "$elapsed" >&2
                shown=$elapsed
            fi
        elif ((elapsed >= next)); then
            detail=""
            if [[ -n "$PROGRESS_DETAIL" ]]; then detail=": $("$PROGRESS_DETAIL" "$log")"; fi
            printf '%s %s: %d s (log: %s)%s\n' "$prefix" "$tag" "$elapsed" "$log" "$detail" >&2
            next=$((next + PROGRESS_INTERVAL))
        fi
    done
    wait "$pid" || rc=$?
    if [[ -t 2 ]]; then
        printf '\r\033[K' >&2
    fi
    STEP_SECONDS=$((SECONDS - start))
    if ((rc != 0)); then
        printf '%s %s: failed after %d s (exit %d); the last lines of %s:\n' \
            "$prefix" "$tag" "$STEP_SECONDS" "$rc" "$log" >&2
        tail -n "$PROGRESS_TAIL" "$log" | sed 's/^/    | /' >&2
        printf '%s retry with: %s\n' "$prefix" "$retry" >&2
        exit "$rc"
    fi
    printf '%s %s: done in %d s\n' "$prefix" "$tag" "$STEP_SECONDS" >&2
}
