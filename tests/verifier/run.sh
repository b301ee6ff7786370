#!/bin/sh
# Build the independent transparency-log verifier (verify.go) offline and print
# the binary's path.
#
#   tests/verifier/run.sh [OUTDIR]        # OUTDIR defaults to a new temp dir
#
# Needs Debian's golang-go and golang-golang-x-mod-dev (Go 1.19, x/mod 0.7):
#   apt-get install -y golang-go golang-golang-x-mod-dev
# The exact build command (GOPATH mode, no module download, no network):
#   GO111MODULE=off GOPROXY=off GOPATH="<tmp>:/usr/share/gocode" \
#       go build -o OUTDIR/verify tests/verifier/verify.go
# Run:
#   OUTDIR/verify -url http://127.0.0.1:PORT -vkey '<vkey>' [-admin-token T] \
#       [-witness-vkey '<name>+<hex>+<b64>' ...] [-proof-file F] [-lenient] [-v]
# Unit tests of the verifier itself:
#   cd tests/verifier && GO111MODULE=off GOPROXY=off GOPATH="<tmp>:/usr/share/gocode" go test .
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/sy-verifier.XXXXXX")}
mkdir -p "$out"
out=$(cd "$out" && pwd)
gopath=$(mktemp -d "${TMPDIR:-/tmp}/sy-verifier-gopath.XXXXXX")
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
    GOCACHE="$gopath/cache"; export GOCACHE
fi
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" \
    go build -o "$out/verify" "$here/verify.go" >&2
rm -rf "$gopath"
echo "$out/verify"
