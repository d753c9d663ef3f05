#!/usr/bin/env bash
# The two container images, built with podman (or buildah): no Docker engine, no registry.
#
#   hack/images.sh [build] [recommender|operator ...]  build the images (default: both)
#   hack/images.sh base           build the local Debian base unless it exists; print its tag
#   hack/images.sh base-tag       print the tag the local base has for the current inputs
#   hack/images.sh --print-tags   print the image tags, one a line
#   hack/images.sh save NAME      export NAME (recommender, operator or any image) as a
#                                 docker-archive tarball, once per image ID; print its path
#
# Needs podman (buildah builds too), and mmdebstrap for the local base.
#
# Environment:
#   SHOPPING_GUIDE_BASE_IMAGE   the image both Dockerfiles build FROM, e.g.
#                               docker.io/library/python:3.11-slim-bookworm where a registry is
#                               reachable. Unset: a local base made from Debian packages
#                               (mmdebstrap from this host's apt sources, then podman import),
#                               tagged localhost/shopping-guide/base:bookworm-<hash of its
#                               inputs> and reused while that tag exists.
#   SHOPPING_GUIDE_APT_SOURCES  apt sources for that base (default: the host's file; without
#                               one, deb.debian.org)
#   SHOPPING_GUIDE_CA_BUNDLE    CA bundle for the build's network steps, given as the build
#                               secret "ca": only those RUN steps see it, no layer keeps it.
#                               Unset: /etc/ssl/certs/ca-certificates.crt when it exists.
#                               Empty: no secret.
#   SHOPPING_GUIDE_CACHE        cache root (default: ~/.cache/shopping-guide); this script keeps
#                               its logs, base tarball and archives under images/ there
#   SHOPPING_GUIDE_BUILDER      podman (default when installed) or buildah
#   SHOPPING_GUIDE_SOURCE_URL   the images' org.opencontainers.image.source label (default:
#                               the git remote "origin", without credentials)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SHOPPING_GUIDE_CACHE:-$HOME/.cache/shopping-guide}"
PREFIX=localhost/shopping-guide
IMAGES=(recommender operator)
HOST_CA=/etc/ssl/certs/ca-certificates.crt

# The local base: what goes into it is also what names it (see base_tag).
BASE_SUITE=bookworm
# python3-venv: Debian's python3 has no ensurepip without it. libgomp1: implicit's wheel
# links the system OpenMP runtime (the recommender Dockerfile installs it when a base lacks it).
BASE_PACKAGES=python3,python3-venv,ca-certificates,libgomp1
BASE_OPTIONS=(
    --variant=minbase
    --include="$BASE_PACKAGES"
    # usr-is-merged instead of usrmerge, which would pull in all of perl.
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    # Nothing reads manuals or translations in a container; licences stay.
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
)
BASE_CHANGES=(
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    'ENV LANG=C.UTF-8'
    'LABEL org.opencontainers.image.title=shopping-guide-base'
    "LABEL org.opencontainers.image.description=Debian $BASE_SUITE minbase with $BASE_PACKAGES"
    'CMD ["python3"]'
)

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'images.sh: %s\n' "$*" >&2
    exit 1
}

version() {
    python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'
}

tag_of() { printf '%s/%s:%s\n' "$PREFIX" "$1" "$(version)"; }

builder() {
    local chosen="${SHOPPING_GUIDE_BUILDER:-}"
    if [ -z "$chosen" ]; then
        if command -v podman >/dev/null; then chosen=podman; else chosen=buildah; fi
    fi
    command -v "$chosen" >/dev/null || die "$chosen is not installed (apt-get install podman)"
    printf '%s\n' "$chosen"
}

# Podman's default limits for containers (nofile=1048576, nproc=32768), lowered to this shell's
# hard limits: without CAP_SYS_RESOURCE the runtime cannot raise them and fails to start the
# container ("error setting rlimits for ready process").
ulimit_flags() {
    local nofile=1048576 nproc=32768 hard
    hard="$(ulimit -Hn)"
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then nofile="$hard"; fi
    hard="$(ulimit -Hu)"
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nproc" ]; then nproc="$hard"; fi
    printf '%s\n' --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
}

apt_sources() {
    local file="${SHOPPING_GUIDE_APT_SOURCES:-}"
    if [ -z "$file" ]; then
        for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
            if [ -s "$candidate" ]; then
                file="$candidate"
                break
            fi
        done
    fi
    printf '%s\n' "$file"
}

base_tag() {
    local sources
    sources="$(apt_sources)"
    {
        printf '%s\n' "$BASE_SUITE" "$(dpkg --print-architecture 2>/dev/null || uname -m)"
        printf '%s\n' "${BASE_OPTIONS[@]}" "${BASE_CHANGES[@]}"
        if [ -n "$sources" ]; then cat "$sources"; fi
    } | sha256sum | cut -c1-12 | sed "s|^|$PREFIX/base:$BASE_SUITE-|"
}

image_exists() { podman image exists "$1"; }

# The build step a log has reached, or else its last line: the detail of a progress line.
progress() {
    local step
    step="$(grep -E '^(\[[0-9]+/[0-9]+\] )?STEP ' "$1" | tail -n 1)" || step="$(tail -n 1 "$1")"
    printf '%s\n' "${step:0:100}"
}

# shellcheck source=hack/lib/progress.sh
source "$REPO/hack/lib/progress.sh"
PROGRESS_DETAIL=progress
# Steps of this run: STEP counts them, STEPS is how many build() planned (0: count as we go).
STEP=0
STEPS=0
RETRY="hack/images.sh"

# Runs "$@" with its output in LOG as step [STEP/STEPS], saying every 30 s how long it has run
# and at which build step it is; on failure, prints the log's tail and the command to retry, and exits.
logged() {
    local what="$1" log="$2"
    shift 2
    STEP=$((STEP + 1))
    progress_step "==>" "$STEP" "$((STEPS > STEP ? STEPS : STEP))" "$what" "$log" "$RETRY" "$@"
}

build_base() {
    local tag sources tarball
    tag="$(base_tag)"
    if image_exists "$tag"; then
        printf '%s\n' "$tag"
        return
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    mkdir -p "$CACHE/images/logs" "$CACHE/images/base"
    sources="$(apt_sources)"
    # One base build at a time; a concurrent one may have made it meanwhile.
    exec 9>"$CACHE/images/base/lock"
    flock 9
    if image_exists "$tag"; then
        printf '%s\n' "$tag"
        return
    fi
    tarball="$CACHE/images/base/rootfs-$$.tar"
    trap 'rm -f "$CACHE/images/base/rootfs-$$.tar"' EXIT
    logged "base $tag: mmdebstrap $BASE_SUITE${sources:+ from $sources}" "$CACHE/images/logs/base.log" \
        mmdebstrap "${BASE_OPTIONS[@]}" "$BASE_SUITE" "$tarball" ${sources:+"$sources"}
    local changes=()
    for change in "${BASE_CHANGES[@]}"; do changes+=(--change "$change"); done
    logged "base $tag: import" "$CACHE/images/logs/base-import.log" \
        podman import "${changes[@]}" --message "mmdebstrap $BASE_SUITE" "$tarball" "$tag"
    rm -f "$tarball"
    printf '%s\n' "$tag"
}

source_url() {
    local url="${SHOPPING_GUIDE_SOURCE_URL:-}"
    if [ -z "$url" ]; then
        url="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
        # git@host:owner/repo.git -> https://host/owner/repo; never pass credentials on.
        url="$(printf '%s' "$url" | sed -E 's|^git@([^:]+):|https://\1/|; s|://[^/@]*@|://|; s|\.git$||')"
    fi
    printf '%s\n' "$url"
}

build_image() {
    local name="$1" base="$2" tag log
    tag="$(tag_of "$name")"
    log="$CACHE/images/logs/$name.log"
    local dockerfile=operator/Dockerfile
    [ "$name" != recommender ] || dockerfile=recommender_image/Dockerfile
    local args=(
        --file "$REPO/$dockerfile"
        --tag "$tag"
        --layers
        --network host
        --build-arg "BASE_IMAGE=$base"
        --build-arg "VERSION=$(version)"
        --build-arg "SOURCE_URL=$(source_url)"
    )
    mapfile -t -O "${#args[@]}" args < <(ulimit_flags)
    local ca="${SHOPPING_GUIDE_CA_BUNDLE-$HOST_CA}"
    if [ -n "$ca" ] && [ -s "$ca" ]; then
        args+=(--secret "id=ca,src=$ca")
    elif [ -n "${SHOPPING_GUIDE_CA_BUNDLE:-}" ]; then
        die "SHOPPING_GUIDE_CA_BUNDLE=$ca is not a readable file"
    fi
    case "$base" in
        localhost/*) args+=(--pull=never) ;;
        *) args+=(--pull=missing) ;;
    esac
    local tool
    tool="$(builder)"
    if [ "$tool" = buildah ]; then
        args+=(--isolation chroot)
        set -- buildah bud "${args[@]}" "$REPO"
    else
        set -- podman build "${args[@]}" "$REPO"
    fi
    logged "$name: $tool build $tag FROM $base" "$log" "$@"
    say "$name: $tag, $(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B," \
        "image ID $(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12)"
}

build() {
    local names=("$@") base
    [ "${#names[@]}" -gt 0 ] || names=("${IMAGES[@]}")
    for name in "${names[@]}"; do
        case " ${IMAGES[*]} " in *" $name "*) ;; *) die "no image $name (${IMAGES[*]})" ;; esac
    done
    mkdir -p "$CACHE/images/logs"
    local start=$SECONDS base_steps=0
    base="${SHOPPING_GUIDE_BASE_IMAGE:-}"
    # The local base, when it is to be made, is two steps (mmdebstrap, import).
    if [ -z "$base" ] && ! image_exists "$(base_tag)"; then base_steps=2; fi
    STEPS=$((base_steps + ${#names[@]}))
    [ -n "$base" ] || base="$(build_base)"
    STEP=$base_steps
    for name in "${names[@]}"; do build_image "$name" "$base"; done
    say "images built in $((SECONDS - start)) s"
}

# docker-archive for `ctr -n k8s.io images import`, saved once per image ID.
save() {
    local image="$1" id name archive
    case " ${IMAGES[*]} " in *" $image "*) image="$(tag_of "$image")" ;; esac
    id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null)" ||
        die "no image $image: run make images"
    name="$(printf '%s' "${image##*/}" | tr ':' '-')"
    archive="$CACHE/images/$name-${id:0:12}.tar"
    if [ ! -s "$archive" ]; then
        mkdir -p "$CACHE/images/logs"
        # Older archives of the same image name only take space.
        find "$CACHE/images" -maxdepth 1 -name "$name-*.tar" ! -name "${archive##*/}" -delete
        logged "save $image as $archive" "$CACHE/images/logs/save-$name.log" \
            podman save --format docker-archive -o "$archive.partial" "$image"
        mv "$archive.partial" "$archive"
    fi
    printf '%s\n' "$archive"
}

main() {
    cd "$REPO"
    RETRY="hack/images.sh${*:+ $*}"
    local command="${1:-build}"
    [ $# -eq 0 ] || shift
    case "$command" in
        build) build "$@" ;;
        recommender | operator) build "$command" "$@" ;;
        base) build_base ;;
        base-tag) base_tag ;;
        --print-tags | tags) for name in "${IMAGES[@]}"; do tag_of "$name"; done ;;
        save)
            [ $# -eq 1 ] || die "usage: hack/images.sh save recommender|operator|IMAGE"
            save "$1"
            ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
        *) die "unknown command $command (try --help)" ;;
    esac
}

main "$@"
