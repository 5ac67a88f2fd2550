#!/usr/bin/env bash
# Install what PAGI-Server-Native needs to build and test on a fresh machine.
#
#   ./setup.sh           build + test dependencies
#   ./setup.sh --bench   also wrk and Mojolicious for bench/
#   ./setup.sh --websocket-clients   also the real WebSocket clients the tests
#                        use: Python's websockets and Autobahn|Testsuite (a
#                        Python 2.7 venv in ~/.cache/pagi-server-native)
#   ./setup.sh --browser also Debian's Chromium, for the SSE browser test
#
# Under CI=true the WebSocket clients and the browser are always prepared.
# Idempotent: silent when everything is present, one line when it installs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

bench=0
ws_clients=0
browser=0
[ "${CI:-}" = true ] && ws_clients=1 && browser=1
for arg in "$@"; do
    case "$arg" in
        --bench) bench=1 ;;
        --websocket-clients) ws_clients=1 ;;
        --browser) browser=1 ;;
        -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "setup.sh: $*" >&2; exit 1; }

# Fail before installing anything: without cargo nothing can be built.
if ! command -v cargo >/dev/null 2>&1; then
    # rustup installs put cargo in ~/.cargo/bin without touching this shell's PATH.
    if [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 \
        || die "cargo (Rust) not found. Install it with rustup: https://rustup.rs/ then open a new shell."
    # Found only via ~/.cargo/env: the caller's shell (and so Makefile.PL) still lacks it.
    echo "setup.sh: cargo is in $HOME/.cargo/bin but not on PATH; run '. \"\$HOME/.cargo/env\"' first." >&2
fi

perl_modules_ok() {
    perl -MIO::Async::Loop -MFuture::AsyncAwait -MFuture::IO -MNet::Async::HTTP -MPlack -MAnyEvent -MJSON::MaybeXS -MHTTP::Entity::Parser -MCookie::Baker -MCryptX -e1 >/dev/null 2>&1
}

if command -v apt-get >/dev/null 2>&1; then
    # Test::More is core perl, so no libtest-simple-perl here. curl, openssl, strace
    # and iproute2 (ss) are tools the tests use; under CI=true they must be there.
    want=(build-essential curl strace libio-async-perl libio-async-loop-epoll-perl
          libfuture-perl libfuture-asyncawait-perl libfuture-io-perl libnet-async-http-perl
          openssl libio-socket-ssl-perl iproute2 starman
          # PSGI software run by t/psgi-*.t and examples/09-psgi-bridge.
          libplack-perl libplack-middleware-session-perl libplack-middleware-deflater-perl
          libanyevent-perl libdancer2-perl libcatalyst-perl libcatalyst-plugin-session-perl
          libcatalyst-plugin-session-state-cookie-perl libcatalyst-plugin-session-store-fastmmap-perl
          # PAGI::Simple: JSON, form/multipart bodies, cookies, session crypto.
          libjson-maybexs-perl libcpanel-json-xs-perl libhttp-entity-parser-perl libcookie-baker-perl
          libhash-multivalue-perl libcryptx-perl
          # Rooms and channels across workers and machines: each test starts its own.
          redis-server)
    [ "$bench" = 1 ] && want+=(wrk libmojolicious-perl)
    [ "$browser" = 1 ] && want+=(chromium)

    missing=()
    for pkg in "${want[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done

    if [ "${#missing[@]}" -gt 0 ]; then
        sudo=()
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null 2>&1 \
                || die "need root (or sudo) to install: ${missing[*]}"
            sudo=(sudo)
        fi
        # apt/dpkg chatter stays in a log that is shown only when something fails.
        log=$(mktemp)
        trap 'rm -f "$log"' EXIT
        if ! { "${sudo[@]}" apt-get update -qq \
               && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                    apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1
        then
            cat "$log" >&2
            die "apt-get failed installing: ${missing[*]}"
        fi
        echo "setup.sh: installed ${missing[*]}"
    fi
else
    # No apt: let cpanm read ./cpanfile, but only when something is missing.
    need_cpanm=0
    perl_modules_ok || need_cpanm=1
    # The test prerequisites of ./cpanfile: the PSGI software of t/psgi-*.t.
    perl -MPlack -MStarman -MPlack::Middleware::Session -MPlack::Middleware::Deflater -MAnyEvent -MDancer2 \
         -MCatalyst -MCatalyst::Plugin::Session -MCatalyst::Plugin::Session::State::Cookie \
         -MCatalyst::Plugin::Session::Store::FastMmap -e1 >/dev/null 2>&1 || need_cpanm=1
    if [ "$bench" = 1 ]; then
        perl -MMojolicious -e1 >/dev/null 2>&1 || need_cpanm=1
        command -v wrk >/dev/null 2>&1 \
            || echo "setup.sh: wrk not found; install it with your package manager for bench/." >&2
    fi
    if [ "$need_cpanm" = 1 ]; then
        command -v cpanm >/dev/null 2>&1 \
            || die "Perl dependencies missing and cpanm not found. Install App::cpanminus (https://metacpan.org/pod/App::cpanminus), then rerun."
        extra=(Starman)    # only recommended in cpanfile, but t/psgi-topsgi.t uses it
        [ "$bench" = 1 ] && extra+=(Mojolicious)
        log=$(mktemp)
        trap 'rm -f "$log"' EXIT
        if ! { cpanm --quiet --notest --installdeps . \
               && { [ "${#extra[@]}" -eq 0 ] || cpanm --quiet --notest "${extra[@]}"; }; } >"$log" 2>&1
        then
            cat "$log" >&2
            die "cpanm failed"
        fi
        echo "setup.sh: installed Perl dependencies with cpanm"
    fi
fi

# Catches a perl other than the system one (perlbrew, plenv) that apt cannot serve.
perl_modules_ok || die "perl ($(command -v perl)) still cannot load IO::Async::Loop, Future::AsyncAwait, Future::IO and Net::Async::HTTP; for a non-system perl run: cpanm --installdeps ."

[ "$ws_clients" = 1 ] || exit 0

# --- Real WebSocket clients: t/ws-python.t and t/ws-autobahn.t use them. ------

# Runs a command with its output kept in a log that is shown only if it fails.
run_logged() {
    local what=$1; shift
    local wlog
    wlog=$(mktemp)
    if ! "$@" >"$wlog" 2>&1; then
        cat "$wlog" >&2
        rm -f "$wlog"
        die "$what failed: $*"
    fi
    rm -f "$wlog"
}

# Python 3 websockets, for t/ws-python.t.
command -v python3 >/dev/null 2>&1 \
    || die "python3 not found; t/ws-python.t needs it with the websockets library."
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    if python3 -m pip --version >/dev/null 2>&1 \
       && python3 -c 'import os, sys, sysconfig; sys.exit(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'
    then
        # A python3 that pip may install into (not a distribution-managed one).
        run_logged "installing websockets" python3 -m pip install --quiet websockets
    elif command -v apt-get >/dev/null 2>&1; then
        sudo=()
        [ "$(id -u)" -ne 0 ] && sudo=(sudo)
        run_logged "apt-get update" "${sudo[@]}" apt-get update -qq
        run_logged "installing python3-websockets" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends python3-websockets
    else
        die "python3 cannot import websockets; install it (python3 -m pip install websockets)."
    fi
    python3 -c 'import websockets' >/dev/null 2>&1 \
        || die "python3 ($(command -v python3)) still cannot import websockets."
    echo "setup.sh: installed Python websockets"
fi

# Autobahn|Testsuite 0.8.2 (Python 2.7 only) in its own virtualenv, for
# t/autobahn/run.pl and t/ws-autobahn.t.
venv="$HOME/.cache/pagi-server-native/autobahn-venv"
if ! [ -x "$venv/bin/wstest" ] || ! "$venv/bin/python" -c 'import autobahntestsuite' >/dev/null 2>&1; then
    is_py27() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; }
    py27=""
    # A pyenv shim is on PATH even when it cannot run, hence the check.
    if cand=$(command -v python2.7 2>/dev/null) && is_py27 "$cand"; then
        py27=$cand
    else
        for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python "$HOME"/.pyenv/versions/2.7*/bin/python; do
            if [ -x "$cand" ] && is_py27 "$cand"; then py27=$cand; break; fi
        done
    fi
    [ -n "$py27" ] || die "Autobahn|Testsuite needs Python 2.7 and none was found (tried python2.7 and \$PYENV_ROOT or ~/.pyenv: versions/2.7*/bin/python). Install it, e.g. 'pyenv install 2.7.18', then rerun."
    if ! "$py27" -m virtualenv --version >/dev/null 2>&1; then
        run_logged "installing virtualenv for $py27" "$py27" -m pip install --quiet virtualenv
    fi
    rm -rf "$venv"    # a half-made venv from an interrupted run
    mkdir -p "$(dirname "$venv")"
    run_logged "creating $venv" "$py27" -m virtualenv "$venv"
    run_logged "installing autobahntestsuite" "$venv/bin/pip" install --quiet 'autobahntestsuite==0.8.2'
    "$venv/bin/python" -c 'import autobahntestsuite' >/dev/null 2>&1 \
        || die "$venv: autobahntestsuite installed but cannot be imported."
    echo "setup.sh: installed Autobahn|Testsuite 0.8.2 in $venv"
fi
