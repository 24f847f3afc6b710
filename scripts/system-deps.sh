#!/bin/sh
# Debian packages the tests and examples drive, installed only when missing (the tests
# themselves install nothing): tmux (a real terminal for tty.attach tests), busybox-static
# (the rootfs of the container example and its test), erlang-base (Erlang/OTP's own
# supervisor, the reference of tests/test_supervisor_differential.py), iproute2 and util-linux
# (`ip`, `unshare`, `prlimit`, `losetup`, which tests drive), and python3-venv (the quick start
# installs into a virtualenv: Debian's own python3 refuses system-wide pip installs, PEP 668).
set -eu
missing=""
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
[ -x /bin/busybox ] || missing="$missing busybox-static"
command -v erl >/dev/null 2>&1 || missing="$missing erlang-base"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v prlimit >/dev/null 2>&1 || missing="$missing util-linux"
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "system-deps: missing:$missing (run as root, or install them)" >&2
        exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
