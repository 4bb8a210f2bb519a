#!/usr/bin/env bash
# Shared by the launch scripts: dry runs, quoting, and the checkout archive.

DRY_RUN="${DRY_RUN:-0}"

# One argument as a person would type it: bare when safe, else in single quotes.
readable() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it (one line, prefixed '+ ', pastable into a shell) under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local arg line="+"
    for arg in "$@"; do
      line+=" $(readable "$arg")"
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

die() {
  echo "launch: $*" >&2
  exit 2
}

# One shell-quoted string from arguments, for commands that run on a remote host.
quote() {
  local out="" arg
  for arg in "$@"; do
    out+=" $(printf '%q' "$arg")"
  done
  printf '%s' "${out# }"
}

# The files git tracks (committed or staged) in this checkout, as a gzipped tarball at $1.
archive_checkout() {
  local root
  root="$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)"
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ git -C %q ls-files -z | tar --null -T - -czf %q\n' "$root" "$1"
  else
    (cd "$root" && git ls-files -z | tar --null -T - -czf "$1")
  fi
}
