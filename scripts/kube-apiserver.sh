#!/usr/bin/env bash
# Provides a real kube-apiserver (Kubernetes 1.20.2) and etcd for the real-server test
# suite (tests/real_api/).
#
# No prebuilt kube-apiserver can be downloaded on the machines CI uses, so this builds
# Debian bookworm's `kubernetes` source package (the whole 1.20.2 tree with vendor/) with
# Debian's Go, once, and caches the binary outside the clone. etcd comes from Debian's
# `etcd-server`. A second run with the binary cached returns at once.
#
# Prints `KUBE_APISERVER_BIN=...` and `ETCD_BIN=...` lines on stdout (progress goes to
# stderr), so a caller can `eval "$(scripts/kube-apiserver.sh)"`.
#
# Environment:
#   KUBE_TEMPLATE_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-template)
set -euo pipefail

version=1.20.2
cache="${KUBE_TEMPLATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-template}"
bin="$cache/kube-apiserver-$version"

say() { echo "kube-apiserver.sh: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "needs root (or sudo) to run: $*"
        exit 1
    fi
}

apt_get() {
    # Another apt run (unattended upgrades, a parallel job) may hold the lock for a while.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"
}

find_etcd() {
    command -v etcd 2>/dev/null || { [ -x /usr/bin/etcd ] && echo /usr/bin/etcd; } || true
}

report() {
    echo "KUBE_APISERVER_BIN=$bin"
    echo "ETCD_BIN=$(find_etcd)"
}

if [ -x "$bin" ] && [ -n "$(find_etcd)" ]; then
    report
    exit 0
fi

# Debian's source entries: the same archive and key as the binary entry, with deb-src.
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
src_list=/etc/apt/sources.list.d/kube-template-src.sources
if ! apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -q '^Sources$'; then
    say "adding deb-src for $codename main ($src_list)"
    uris="http://deb.debian.org/debian"
    signed_by="/usr/share/keyrings/debian-archive-keyring.gpg"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        found="$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
        uris="${found:-$uris}"
        found="$(awk '/^Signed-By:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
        signed_by="${found:-$signed_by}"
    fi
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$uris" "$codename" "$signed_by" | as_root tee "$src_list" >/dev/null
fi

say "installing build tools and etcd"
apt_get update -q >&2
# rsync and jq: Kubernetes' build scripts need them (code generators fail without rsync).
apt_get install -y -q --no-install-recommends \
    golang-go rsync jq make etcd-server golang-github-modern-go-reflect2-dev \
    openssl ca-certificates dpkg-dev >&2

if [ -x "$bin" ]; then
    report
    exit 0
fi

build="$cache/build"
mkdir -p "$build"
cd "$build"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    say "downloading Debian's kubernetes source package"
    apt-get source --download-only kubernetes >&2
fi
orig="$(ls kubernetes_*.orig.tar.gz | head -n1)"
rm -rf tree
mkdir tree
say "unpacking $orig"
tar -xzf "$orig" -C tree --strip-components=1

cd tree
# Kubernetes 1.20 vendors reflect2 1.0.1, which breaks under Go 1.18+: the server dies
# with SIGSEGV on the first custom resource it decodes. Use Debian's 1.0.2 instead.
reflect2=vendor/github.com/modern-go/reflect2
rm -rf "$reflect2"
mkdir -p "$reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. "$reflect2/"
rm -f "$reflect2"/*_test.go "$reflect2/go.mod" "$reflect2/go.sum"
# The build runs in GOPATH mode (GO111MODULE=off), where only the files count; the
# version lines are changed too so that the tree says what it holds.
sed -i '/modern-go\/reflect2/ s/v1\.0\.1/v1.0.2/g' vendor/modules.txt go.mod
if ! grep -q '^# github.com/modern-go/reflect2 v1.0.2' vendor/modules.txt; then
    say "could not pin reflect2 1.0.2 in vendor/modules.txt"
    exit 1
fi

# A plain `go build -mod=vendor` fails with Go 1.19 ("updates to go.mod needed"); the
# Makefile's GOPATH build works.
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
say "building kube-apiserver $version (about 4 minutes on 2 cores)"
env GOPATH="$PWD/.go" CGO_ENABLED=0 make WHAT=cmd/kube-apiserver >&2

cp _output/bin/kube-apiserver "$bin.tmp"
mv "$bin.tmp" "$bin"
cd "$cache"
rm -rf "$build/tree"
say "cached $bin"
report
