#!/usr/bin/env bash
# KEDA's published ScaledObject CRD, from KEDA's own Go module through the Go module proxy
# (checksum-verified by the go command), cached outside the repository. Prints its path.
#
#   hack/keda/crd.sh            # the version below
#   KEDA_VERSION=v2.x.y hack/keda/crd.sh
#
# Needs the go command: installed with apt-get (as root) when it is missing.
set -euo pipefail
KEDA_VERSION="${KEDA_VERSION:-v2.21.1}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vgate/keda/${KEDA_VERSION}"
CRD="${CACHE}/keda.sh_scaledobjects.yaml"
if [[ -s "$CRD" ]]; then
    echo "$CRD"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "hack/keda/crd.sh: installing the go command (apt-get install golang-go)" >&2
        apt-get update -qq >&2 && apt-get install -y -qq golang-go >&2
    else
        echo "hack/keda/crd.sh: needs the go command (https://go.dev/dl/)" >&2
        exit 1
    fi
fi
mkdir -p "$CACHE"
# A module cache of its own, so the download needs no go.mod and touches no other cache. The
# verified zip is enough: unpacking it (Dir) needs the Go version KEDA's go.mod asks for, and
# go says so as an error (hence `|| true`), after it has downloaded and verified the zip.
export GOMODCACHE="${CACHE}/gomod" GOFLAGS=-modcacherw GOTOOLCHAIN=local
zip=$(cd "$CACHE" && go mod download -json "github.com/kedacore/keda/v2@${KEDA_VERSION}" \
    | sed -n 's/^[[:space:]]*"Zip": "\(.*\)",$/\1/p' || true)
if [[ ! -s "$zip" ]]; then
    echo "hack/keda/crd.sh: go mod download of KEDA ${KEDA_VERSION} gave no module zip" >&2
    exit 1
fi
member="github.com/kedacore/keda/v2@${KEDA_VERSION}/config/crd/bases/keda.sh_scaledobjects.yaml"
python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$zip" "$member" >"$CRD.tmp"
mv "$CRD.tmp" "$CRD"
rm -rf "${CACHE}/gomod"
echo "$CRD"
