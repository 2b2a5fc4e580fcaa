#!/bin/sh
# The container listens on 0.0.0.0 (a published port is useless otherwise), and the server itself
# only warns when it listens beyond loopback without a token. In a container nobody reads that
# warning, so here it is an error: `promptcast serve` does not start without a token.
set -eu

# Docker and Kubernetes secrets arrive as files; the server reads the token from the environment.
if [ -n "${PROMPTCAST_TOKEN_FILE:-}" ]; then
    PROMPTCAST_TOKEN=$(cat "$PROMPTCAST_TOKEN_FILE")
    export PROMPTCAST_TOKEN
fi

if [ "${1:-}" = promptcast ] && [ "${2:-}" = serve ]; then
    case "${PROMPTCAST_HOST:-127.0.0.1}" in
        127.*|localhost|::1) ;;
        *)
            if [ -z "${PROMPTCAST_TOKEN:-}" ]; then
                echo "promptcast: refusing to listen on ${PROMPTCAST_HOST} without a token:" \
                     "set PROMPTCAST_TOKEN (or PROMPTCAST_TOKEN_FILE, e.g. a Docker secret)" >&2
                exit 64
            fi
            ;;
    esac
fi
exec "$@"
