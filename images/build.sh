#!/usr/bin/env bash
# images/build.sh cpu|gpu [TAG...]: build a Foundry image with docker where an engine answers,
# else with buildah, and print the image's content tag (last line of stdout).
#
# The content tag, localhost/foundry-<kind>:src-<digest>, is a digest of everything that goes
# into the image: the Dockerfile and its .dockerignore, pyproject.toml, README.md, foundry/,
# jobs/, the extra CA certificates, the torch wheels and the build arguments (the base image
# by its id where the engine knows it). An image with that tag is reused as it is; any change
# to those inputs gives a new tag, so a test never runs a stale image.
#
# Environment (all optional):
#   ENGINE        docker or buildah (default: docker if `docker info` answers, else buildah)
#   PYTHON_IMAGE  the CPU image's base (default: the Dockerfile's; `make base-image` makes one)
#   CUDA_IMAGE    the GPU image's base (default: the Dockerfile's)
#   TORCH_WHEELS  a folder with a torch wheel for the CPU image (default: $PIP_FIND_LINKS);
#                 without one, torch comes from PyTorch's CPU index
#   EXTRA_CA      a folder of extra CA certificates (*.crt) the build trusts (default: the
#                 machine's local ones, /usr/local/share/ca-certificates)
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:?usage: images/build.sh cpu|gpu [TAG...]}
shift
case $kind in cpu | gpu) ;; *) echo "images/build.sh: unknown image '$kind'; expected cpu or gpu" >&2; exit 2 ;; esac
dockerfile=images/Dockerfile.$kind
inputs=build/image-inputs

engine=${ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v buildah >/dev/null; then
        engine=buildah
    else
        echo "images/build.sh: no container engine: no Docker engine answers (docker info) and buildah is not installed; start Docker, or install buildah (\`make container-tools\`, or apt-get install buildah podman runc)" >&2
        exit 1
    fi
fi

image_id() {  # the engine's id of an image, empty when it does not have it
    if [ "$engine" = docker ]; then docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
    else buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; fi
}

# The build's inputs outside the context: extra CA certificates and torch wheels, staged
# under build/ (hard links where the file system allows) so the context stays this checkout.
rm -rf "$inputs"
mkdir -p "$inputs/ca" "$inputs/wheels"
extra_ca=${EXTRA_CA:-/usr/local/share/ca-certificates}
if [ -d "$extra_ca" ]; then
    find "$extra_ca" -name '*.crt' -type f -exec cp {} "$inputs/ca/" \;
fi
torch_version=$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
args=(--build-arg "TORCH_VERSION=$torch_version")
if [ "$kind" = cpu ]; then
    wheels=${TORCH_WHEELS:-${PIP_FIND_LINKS:-}}
    if [ -n "$wheels" ] && compgen -G "$wheels/torch-$torch_version[+-]*.whl" >/dev/null; then
        ln "$wheels"/torch-"$torch_version"[+-]*.whl "$inputs/wheels/" 2>/dev/null || cp "$wheels"/torch-"$torch_version"[+-]*.whl "$inputs/wheels/"
        args+=(--build-arg TORCH_FROM=wheels)
    fi
    base=${PYTHON_IMAGE:-}
    [ -z "$base" ] || args+=(--build-arg "PYTHON_IMAGE=$base")
else
    base=${CUDA_IMAGE:-}
    [ -z "$base" ] || args+=(--build-arg "CUDA_IMAGE=$base")
fi
base=${base:-$(sed -n 's/^ARG \(PYTHON\|CUDA\)_IMAGE=//p' "$dockerfile" | head -n 1)}

digest=$({
    printf '%s\n' "$engine" "${args[@]}" "$base" "$(image_id "$base")"
    find "$dockerfile" "$dockerfile.dockerignore" pyproject.toml README.md foundry jobs "$inputs" -type f \
        -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
tag=localhost/foundry-$kind:src-$digest

if [ -n "$(image_id "$tag")" ]; then
    echo "images/build.sh: $tag is up to date (its inputs are unchanged)" >&2
else
    echo "images/build.sh: building $tag with $engine from $dockerfile" >&2
    if [ "$engine" = docker ]; then
        docker build -f "$dockerfile" "${args[@]}" -t "$tag" . >&2
    else
        # chroot isolation: the build's RUN steps need no runtime or cgroups of their own.
        buildah bud --isolation chroot --layers -f "$dockerfile" "${args[@]}" -t "$tag" . >&2
    fi
fi
for extra in "$@"; do
    "$engine" tag "$tag" "$extra" >&2
done
echo "$tag"
