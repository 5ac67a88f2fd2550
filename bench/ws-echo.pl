#!/usr/bin/env perl
# WebSocket echo under load: pagi-server (this dist, from blib/, running
# examples/04-websocket-echo) vs Mojolicious's WebSocket echo, one run.
# The load is a Python asyncio + websockets client (below __DATA__): N
# connections, each sending a small text message and waiting for its echo,
# back to back, for DURATION seconds; it reports echoes/s and round-trip p99.
# Usage (from anywhere, after `make`):
#   perl bench/ws-echo.pl [--duration S] [--rounds N] [--connections N] [--size BYTES] [--only pagi|mojo]
#   perl bench/ws-echo.pl --url ws://HOST:PORT/ [--duration S] ...   (load any echo server, no comparison)
# See bench/README.md.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use Getopt::Long qw(GetOptions);
use IO::Socket::IP;
use JSON::PP ();
use PAGI::Bench qw(:all);

# --- What runs. Placeholders: %PORT% is filled per server. -------------------
# PAGI_ENV=production keeps the runner from adding dev-mode middleware;
# -m production keeps Mojolicious from debug-logging.
my @PAGI_CMD = (
    $^X, '-Mblib', 'bin/pagi-server',
    '--app', 'examples/04-websocket-echo/app.pl',
    '--host', '127.0.0.1', '--port', '%PORT%',
    '--quiet', '--no-access-log',
);
my @MOJO_CMD = (
    $^X, 'bench/apps/ws-echo-mojo.pl', 'daemon',
    '-m', 'production', '-l', 'http://127.0.0.1:%PORT%',
);
my $READY_TIMEOUT = 15;    # seconds a server gets to start answering
my $WARMUP        = 1;     # seconds of unrecorded load per server before round 1

my %opt = (duration => 5, rounds => 3, connections => 50, size => 32, only => '', url => '');
GetOptions(\%opt, 'duration=i', 'rounds=i', 'connections=i', 'size=i', 'only=s', 'url=s', 'help')
    or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1 || $opt{connections} < 1 || $opt{size} < 1;
usage(2) if $opt{only} ne '' && $opt{only} !~ /^(pagi|mojo)$/;
usage(2) if $opt{url} ne '' && $opt{url} !~ m{^wss?://};

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/ws-echo.pl [--duration SECONDS] [--rounds N] [--connections N] [--size BYTES] [--only pagi|mojo]
       perl bench/ws-echo.pl --url ws://HOST:PORT/PATH [--duration S] [--connections N] [--size BYTES]
  --duration     seconds of load per run (default 5)
  --rounds       interleaved rounds per server (default 3)
  --connections  concurrent WebSocket connections (default 50)
  --size         bytes per text message (default 32)
  --only         run one server (no ratio); for checking the harness
  --url          load an echo server that is already running; prints one result
USAGE
    exit $_[0];
}

# Paths in the commands are relative to the repo root.
chdir_repo_root();

my $python = check_tools();
my $client_dir = File::Temp->newdir;
my $client = "$client_dir/ws_echo_client.py";
{
    open my $fh, '>', $client or die "write $client: $!\n";
    print {$fh} do { local $/; <DATA> };
    close $fh or die "write $client: $!\n";
}

if ($opt{url}) {
    probe($opt{url}, 'server');
    my $res = run_client({ name => 'server', url => $opt{url} }, $opt{duration});
    printf "%s: %.0f echoes/s, p50 %.2f ms, p99 %.2f ms over %d connections, %d messages, %d errors\n",
        $opt{url}, $res->{rate}, $res->{p50_ms}, $res->{p99_ms}, $res->{connections}, $res->{messages}, $res->{errors};
    exit 0;
}

my @servers;
push @servers, { name => 'pagi', cmd => \@PAGI_CMD } if $opt{only} ne 'mojo';
push @servers, { name => 'mojo', cmd => \@MOJO_CMD } if $opt{only} ne 'pagi';

my $stamp   = timestamp();
my $out_dir = results_dir();
trap_signals();    # PAGI::Bench's END stops the servers on any exit

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{url}  = "ws://127.0.0.1:$s->{port}/";
    $s->{log}  = "$out_dir/$stamp-ws-$s->{name}.log.tmp";
    start_server($s);
}
for my $s (@servers) {
    # Ready when the port accepts; the echo probe then checks it properly.
    wait_ready($s, timeout => $READY_TIMEOUT,
        check => sub { IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $_[0], Timeout => 1) });
    probe($s->{url}, $s->{name});
}

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s)\n";
    run_client($s, $WARMUP);
}

run_rounds(
    rounds  => $opt{rounds},
    servers => \@servers,
    cpu     => 1,
    run     => sub { run_client($_[0], $opt{duration}) },
    report  => sub {
        my ($s, $res) = @_;
        printf "round %d %-5s %10.0f echoes/s  p99 %7.2f ms  (client CPU %.0f%%)\n",
            $res->{round}, $s->{name}, $res->{rate}, $res->{p99_ms}, 100 * $res->{client_cpu_s} / $res->{seconds};
    },
);
record_rss(@servers);

my $summary = summary(@servers);
print "\n$summary";
save_results("$out_dir/$stamp-ws-echo.txt", $summary, \@servers, raw_end => "\n");

exit 0;    # END stops the servers

# ---------------------------------------------------------------------------

sub check_tools {
    chomp(my $py = `sh -c 'command -v python3' 2>/dev/null` // '');
    die "python3 not found: the load client is Python (asyncio + websockets).\n" unless $py;
    system('sh', '-c', '"$0" -c "import websockets" >/dev/null 2>&1', $py) == 0
        or die "$py cannot import websockets. Run ./setup.sh --websocket-clients (or python3 -m pip install websockets).\n";
    return $py if $opt{url};
    if ($opt{only} ne 'pagi') {
        system($^X, '-MMojolicious', '-e1') == 0
            or die "Mojolicious not installed. Run ./setup.sh --bench first.\n";
    }
    require_pagi_build(lib => 1) if $opt{only} ne 'mojo';
    return $py;
}

# Both servers must echo the same way before their figures are compared.
sub probe {
    my ($url, $name) = @_;
    my $out = `"$python" "$client" probe "$url" $opt{size} 2>&1`;
    die "$name at $url does not echo correctly:\n$out" if $? != 0;
    print "$name echoes: $out";
}

sub run_client {
    my ($s, $seconds) = @_;
    my @cmd = ($python, $client, 'load', $s->{url}, $opt{connections}, $seconds, $opt{size});
    open my $pipe, '-|', @cmd or die "run $python: $!\n";
    my $raw = do { local $/; <$pipe> } // '';
    close $pipe;
    die "load client failed (status $?) against $s->{name}:\n$raw" if $? != 0;
    die "$s->{name} died during the run; see $s->{log}\n" if server_died($s);
    my ($line) = grep { /^\{/ } split /\n/, $raw;
    my $res = $line && eval { JSON::PP->new->decode($line) }
        or die "cannot parse the load client's output for $s->{name}:\n$raw";
    die "no echo completed against $s->{name}:\n$raw" unless $res->{messages};
    warn "warning: $s->{name}: $res->{errors} connection(s) failed: @{ $res->{error_samples} }\n"
        if $res->{errors};
    $res->{raw} = JSON::PP->new->canonical->encode({%$res});
    return $res;
}

sub summary {
    my @servers = @_;
    my $hz      = clock_ticks();
    my $mojo_v = `$^X -MMojolicious -e 'print Mojolicious->VERSION' 2>/dev/null` || 'n/a';
    my ($ws_v) = map { $_->{websockets_version} } map { @{ $_->{runs} } } @servers;
    my ($py_v) = map { $_->{python_version} } map { @{ $_->{runs} } } @servers;

    my $text = "pagi-server vs Mojolicious, WebSocket echo, $stamp\n" . host_info();
    $text .= "Mojolicious: $mojo_v; client: Python $py_v, websockets $ws_v (compression off)\n";
    $text .= "load: $opt{connections} connections, each echoing a $opt{size}-byte text message back to back "
        . "for $opt{duration}s; $opt{rounds} interleaved rounds, medians below\n";
    $text .= "$_->{name}: $_->{cmdline}\n" for @servers;
    $text .= "\n";
    $text .= sprintf "%-6s %12s %9s %9s %14s %10s %12s\n",
        'server', 'echoes/s', 'p50 ms', 'p99 ms', 'CPU us/echo', 'RSS kB', 'client CPU';
    for my $s (@servers) {
        my @runs = @{ $s->{runs} };
        $s->{med_rate} = median(map { $_->{rate} } @runs);
        my $cpu_us = median(map { $_->{messages} ? $_->{cpu_ticks} / $hz * 1e6 / $_->{messages} : 0 } @runs);
        $text .= sprintf "%-6s %12.0f %9.2f %9.2f %14.1f %10d %11.0f%%\n",
            $s->{name}, $s->{med_rate}, median(map { $_->{p50_ms} } @runs), median(map { $_->{p99_ms} } @runs),
            $cpu_us, rss_total($s), median(map { 100 * $_->{client_cpu_s} / $_->{seconds} } @runs);
    }
    if (@servers == 2 && $servers[1]{med_rate} > 0) {
        $text .= sprintf "\nratio pagi/mojo (echoes/s): %.2f\n", $servers[0]{med_rate} / $servers[1]{med_rate};
    }
    $text .= rss_section(@servers);
    $text .= "echoes/s: completed round trips (message sent, echo received) per second, all connections.\n";
    $text .= "CPU us/echo: server process tree CPU time during the round / echoes completed.\n";
    $text .= "client CPU: the load client's CPU time / wall time (near 100% means the client is the limit).\n";
    return $text;
}

__DATA__
# Load client for bench/ws-echo.pl (written to a temp file and run by it).
#   probe URL SIZE                        checks the echo, prints one line
#   load URL CONNECTIONS SECONDS SIZE     prints one JSON line of results
import asyncio, json, math, platform, sys, time
import websockets
try:
    from websockets.asyncio.client import connect
except ImportError:                     # websockets < 13
    from websockets import connect

OPTS = dict(ping_interval=None, max_size=None, compression=None, open_timeout=30)

async def probe(url, size):
    async with connect(url, **OPTS) as ws:
        for msg in ["x" * size, "h\u00e9llo \u2713"]:
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != msg:
                sys.exit("echo mismatch: sent %r, got %r" % (msg, got))
    print("text echo ok (%d bytes and non-ASCII)" % size)

async def load(url, conns, seconds, size):
    msg = "m" * size
    ready = asyncio.Event()
    window = {}
    lat, counts, errors = [], [0] * conns, []
    connected = [0]

    async def worker(i):
        try:
            async with connect(url, **OPTS) as ws:
                await ws.send(msg)
                if await ws.recv() != msg:
                    raise RuntimeError("echo mismatch")
                connected[0] += 1
                if connected[0] == conns:
                    window["start"] = time.perf_counter()
                    window["cpu"] = time.process_time()
                    ready.set()
                await ready.wait()
                deadline = window["start"] + seconds
                n, mine, now = 0, [], time.perf_counter()
                while now < deadline:
                    await ws.send(msg)
                    got = await ws.recv()
                    t = time.perf_counter()
                    if got != msg:
                        raise RuntimeError("echo mismatch")
                    mine.append(t - now)
                    n, now = n + 1, t
                counts[i] = n
                lat.extend(mine)
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, e))
            connected[0] += 1
            if connected[0] == conns and not ready.is_set():
                window["start"] = time.perf_counter()
                window["cpu"] = time.process_time()
                ready.set()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    end = time.perf_counter()
    elapsed = end - window.get("start", end) or 1e-9
    lat.sort()
    def pct(p):
        return 1000 * lat[max(0, math.ceil(p * len(lat)) - 1)] if lat else 0
    total = sum(counts)
    print(json.dumps({
        "connections": conns, "seconds": round(elapsed, 3), "messages": total,
        "rate": total / elapsed, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        "max_ms": pct(1.0), "min_per_connection": min(counts), "max_per_connection": max(counts),
        "errors": len(errors), "error_samples": errors[:3],
        "client_cpu_s": time.process_time() - window.get("cpu", time.process_time()),
        "websockets_version": websockets.__version__, "python_version": platform.python_version(),
    }))

if sys.argv[1] == "probe":
    asyncio.run(probe(sys.argv[2], int(sys.argv[3])))
else:
    asyncio.run(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
