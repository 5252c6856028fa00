#!/usr/bin/env bash
# The startup script of a burla worker VM: the coordinator's GCE provider sets it as the VM's
# startup-script. It installs the cluster's burla and the client's Python, then runs the agent.
#
# It reads the instance attributes burla-version (the cluster's exact burla version) and
# burla-python (the client's Python minor version, e.g. 3.12), installs both with uv under
# /opt/burla, writes /etc/systemd/system/burla-agent.service (systemd/burla-agent.service in
# the repository), which runs `burla agent --from-metadata`, and starts it. GCE runs it at
# every boot; a later run keeps what an earlier one installed.
#
# Where PID 1 is not systemd (a container, a test machine) it runs the agent itself, in the
# foreground, with its log in the state dir. Tests (tests/fakes/vms.py) run it in a network
# namespace with:
#   BURLA_STARTUP_METADATA_URL    the stand-in metadata server
#   BURLA_STARTUP_SKIP_INSTALL=1  and BURLA_STARTUP_PYTHON, an interpreter that has burla
#   BURLA_STARTUP_STATE_DIR       the agent's state dir
#   BURLA_STARTUP_AGENT_ARGS      more agent flags, e.g. "--cpus 1"
set -euo pipefail

METADATA_URL=${BURLA_STARTUP_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}
PREFIX=${BURLA_STARTUP_PREFIX:-/opt/burla}
STATE_DIR=${BURLA_STARTUP_STATE_DIR:-/var/lib/burla/agent}
UNIT_PATH=/etc/systemd/system/burla-agent.service
UV_VERSION=0.9.26     # the uv installed when the image has none
METADATA_TRIES=60     # one a second: the network may come up after this script starts

say() { echo "burla-startup: $*" >&2; }
die() { say "error: $*"; exit 1; }

# attribute NAME: the instance attribute's value on stdout; nothing when it is not set.
attribute() {
    local name=$1 body status try
    body=$(mktemp)
    for ((try = 1; try <= METADATA_TRIES; try++)); do
        status=$(curl -sS --connect-timeout 2 --max-time 5 -o "$body" -w '%{http_code}' \
            -H 'Metadata-Flavor: Google' "$METADATA_URL/instance/attributes/$name") || true
        case $status in
            200) cat "$body"; rm -f "$body"; return 0 ;;
            404) rm -f "$body"; return 0 ;;
        esac
        sleep 1
    done
    rm -f "$body"
    die "the metadata server at $METADATA_URL did not answer for attribute $name" \
        "in $METADATA_TRIES tries (last HTTP status: ${status:-none})"
}

# python_minor PYTHON: the interpreter's X.Y.
python_minor() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# install_burla VERSION PYTHON: burla==VERSION in $PREFIX/venv, on Python PYTHON (X.Y).
install_burla() {
    local version=$1 python=$2 venv=$PREFIX/venv uv
    if [[ -x $venv/bin/python ]] && [[ $(python_minor "$venv/bin/python") == "$python" ]] &&
        [[ $("$venv/bin/python" -c 'import burla; print(burla.__version__)' 2>/dev/null) == \
            "$version" ]]; then
        say "burla $version on Python $python is installed already"
        return
    fi
    uv=$(command -v uv || true)
    if [[ -z $uv ]]; then
        say "installing uv $UV_VERSION into $PREFIX/bin"
        curl -LsSf "https://astral.sh/uv/$UV_VERSION/install.sh" |
            env UV_UNMANAGED_INSTALL="$PREFIX/bin" sh
        uv=$PREFIX/bin/uv
    fi
    export UV_PYTHON_INSTALL_DIR=$PREFIX/python UV_CACHE_DIR=$PREFIX/cache
    say "installing Python $python and burla $version into $venv"
    "$uv" python install "$python"
    rm -rf "$venv"
    "$uv" venv --python "$python" "$venv"
    "$uv" pip install --python "$venv/bin/python" "burla==$version"
}

# write_unit PYTHON: the agent's systemd unit, running burla with PYTHON.
write_unit() {
    local agent_python=$1
    mkdir -p "$(dirname "$UNIT_PATH")"
    cat >"$UNIT_PATH" <<UNIT
[Unit]
Description=burla agent (offers this node's CPUs/GPUs, runs calls in sandboxed executors)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
# The coordinator, bootstrap token and agent id (the instance name) come from the metadata
# server: the coordinator set them when it created this VM (scripts/startup.sh writes this unit).
ExecStart=${agent_python} -m burla agent --from-metadata --state-dir ${STATE_DIR} --sandbox
# uv, which the agent builds environments with, is in ${PREFIX}/bin.
Environment=PATH=${PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# always: a clean exit (a coordinator told it to stop, a refused Hello) must come back too;
# systemctl stop still stops it for good. An orphaned agent deletes its VM before it exits.
Restart=always
RestartSec=1
WatchdogSec=30
TimeoutStopSec=20
# The agent creates one cgroup per executor below its own (cpu.max, memory.max, pids.max).
Delegate=yes
# Executors die with the agent; SIGTERM first so it can stop them cleanly.
KillMode=mixed
StateDirectory=burla
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
UNIT
}

main() {
    local version python agent_python
    version=$(attribute burla-version)
    python=$(attribute burla-python)
    if [[ -n $python && ! $python =~ ^3\.[0-9]+$ ]]; then
        die "metadata attribute burla-python is '$python', not a Python minor version like 3.12"
    fi
    if [[ ${BURLA_STARTUP_SKIP_INSTALL:-} == 1 ]]; then
        agent_python=${BURLA_STARTUP_PYTHON:-}
        [[ -x $agent_python ]] || die "BURLA_STARTUP_SKIP_INSTALL=1 needs BURLA_STARTUP_PYTHON," \
            "an interpreter that has burla installed (got '${agent_python}')"
        "$agent_python" -c 'import burla' ||
            die "BURLA_STARTUP_PYTHON=$agent_python cannot import burla"
        local have
        have=$(python_minor "$agent_python")
        if [[ -n $python && $have != "$python" ]]; then
            die "BURLA_STARTUP_PYTHON=$agent_python is Python $have; the cluster wants $python"
        fi
        say "install skipped: running burla from $agent_python"
    else
        [[ -n $version ]] || die "metadata attribute burla-version is missing on this" \
            "instance: the coordinator sets it when it creates the VM"
        [[ -n $python ]] || die "metadata attribute burla-python is missing on this" \
            "instance: the coordinator sets it when it creates the VM"
        [[ $version =~ ^[0-9][0-9A-Za-z.+!-]*$ ]] ||
            die "metadata attribute burla-version is '$version', not a version like 1.2.0"
        install_burla "$version" "$python"
        agent_python=$PREFIX/venv/bin/python
    fi

    if [[ -d /run/systemd/system ]]; then  # how sd_booted(3) tells PID 1 is systemd
        write_unit "$agent_python"
        systemctl daemon-reload
        systemctl enable --now burla-agent.service
        say "burla-agent.service started"
        return
    fi
    mkdir -p "$STATE_DIR"
    say "no systemd here: running the agent in the foreground, its log in $STATE_DIR/agent.log"
    # shellcheck disable=SC2086  # BURLA_STARTUP_AGENT_ARGS is a list of flags, split on purpose
    exec "$agent_python" -m burla agent --from-metadata --metadata-url "$METADATA_URL" \
        --state-dir "$STATE_DIR" --sandbox ${BURLA_STARTUP_AGENT_ARGS:-} \
        >>"$STATE_DIR/agent.log" 2>&1
}

# Sourced (as the tests do, to render the unit), it only defines the functions above.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
