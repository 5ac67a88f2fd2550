#!/usr/bin/env bash
# Install what PAGI-Server-Native needs to build and test on a fresh machine.
#
#   ./setup.sh           build + test dependencies
#   ./setup.sh --bench   also Starman, Plack and wrk for bench/compare-starman.pl
#
# Idempotent: silent when everything is present, one line when it installs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

bench=0
for arg in "$@"; do
    case "$arg" in
        --bench) bench=1 ;;
        -h|--help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
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
    perl -MIO::Async::Loop -MFuture::AsyncAwait -MNet::Async::HTTP -e1 >/dev/null 2>&1
}

if command -v apt-get >/dev/null 2>&1; then
    # Test::More is core perl, so no libtest-simple-perl here.
    want=(build-essential curl libio-async-perl libio-async-loop-epoll-perl
          libfuture-perl libfuture-asyncawait-perl libnet-async-http-perl)
    [ "$bench" = 1 ] && want+=(starman wrk libplack-perl)

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
    if [ "$bench" = 1 ]; then
        perl -MPlack -MStarman -e1 >/dev/null 2>&1 || need_cpanm=1
        command -v wrk >/dev/null 2>&1 \
            || echo "setup.sh: wrk not found; install it with your package manager for bench/." >&2
    fi
    if [ "$need_cpanm" = 1 ]; then
        command -v cpanm >/dev/null 2>&1 \
            || die "Perl dependencies missing and cpanm not found. Install App::cpanminus (https://metacpan.org/pod/App::cpanminus), then rerun."
        extra=()
        [ "$bench" = 1 ] && extra=(Plack Starman)
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
perl_modules_ok || die "perl ($(command -v perl)) still cannot load IO::Async::Loop, Future::AsyncAwait and Net::Async::HTTP; for a non-system perl run: cpanm --installdeps ."
