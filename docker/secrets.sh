# shellcheck shell=sh
# `read_secret NAME required|optional`: sets NAME from the file named by NAME_FILE (a Docker
# secret) or keeps NAME as given, then refuses a secret that is short or an example value.
# Sourced by every service that reads a secret: mlflow-server.sh and the database's entrypoint.

MIN_SECRET_LENGTH=24

read_secret() {
    eval "file=\${$1_FILE:-} value=\${$1:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "$1_FILE: cannot read $file" >&2
            exit 2
        fi
        value=$(cat "$file")
    fi
    if [ -z "$value" ]; then
        if [ "$2" = required ]; then
            echo "set $1 or $1_FILE to a secret of your own (docs/team-server.md)" >&2
            exit 2
        fi
        unset "$1" "$1_FILE"
        return 0
    fi
    case $value in
        change-me* | *"<"*">"*)
            echo "$1 is an example value; generate a secret of your own (docs/team-server.md)" >&2
            exit 2
            ;;
    esac
    if [ "${#value}" -lt "$MIN_SECRET_LENGTH" ]; then
        echo "$1 needs at least $MIN_SECRET_LENGTH characters" >&2
        exit 2
    fi
    export "$1=$value"
    unset "$1_FILE"
}
