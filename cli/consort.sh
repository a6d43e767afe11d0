#!/usr/bin/env bash
# `npx consort`: the CLI on the project's pinned Node (scripts/node.sh provisions it, cached),
# whatever node is first on PATH: the CLI is TypeScript run by Node 24's type stripping, which
# an older system node refuses ("Unknown file extension .ts").
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
node_bin="$(bash "$here/../scripts/node.sh")"
exec "$node_bin/node" "$here/consort.ts" "$@"
