#!/bin/sh
# Raise the soft open-files limit to the hard one, then run zuulpush with the container's arguments.
# The edge derives its connection ceilings from the soft limit (README: Load shedding and connection
# lifetime), and container runtimes differ: some start containers at a soft limit of 1024 under a
# hard one of 524288 or more. The hard limit is the runtime's (docker run --ulimit nofile=N:N).
set -eu
ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
exec zuulpush "$@"
