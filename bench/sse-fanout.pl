#!/usr/bin/env perl
# SSE fan-out rate: events per second delivered to 50 EventSource clients by
# pagi-server (this dist) and by Mojolicious, same hub, same run.
# Usage (from the repo root, after `make`): perl bench/sse-fanout.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Getopt::Long qw(GetOptions);
use IO::Select;
use IO::Socket::IP;
use List::Util qw(min max sum0);
use PAGI::Bench qw(:all);
use Time::HiRes qw(sleep time);

# --- What runs. Placeholders: %PORT% is filled per server. -------------------
# lib/ before blib/arch, as the test suite does: the .pm files from the
# checkout, the compiled engine from the build.
# PAGI_ENV=production keeps the runner from adding dev-mode middleware.
my @PAGI_CMD = (
    $^X, '-Ilib', '-Iblib/arch', 'bin/pagi-server',
    '--app', 'bench/apps/sse-fanout.pl',
    '--host', '127.0.0.1', '--port', '%PORT%',
    '--quiet', '--no-access-log',
);
my @MOJO_CMD = (
    $^X, 'bench/apps/sse-fanout-mojo.pl', 'daemon',
    '--mode', 'production',
    '--listen', 'http://127.0.0.1:%PORT%',
);
my $READY_TIMEOUT   = 15;     # seconds a server gets to start answering
my $CONNECT_TIMEOUT = 10;     # seconds for all clients to get their first event
my $SETTLE          = 0.5;    # seconds of unrecorded streaming before each window
my $WARMUP          = 1;      # seconds of unrecorded streaming per server before round 1
my $READ_SIZE       = 262_144;

my %opt = (duration => 5, rounds => 3, clients => 50, batch => 50, only => '');
GetOptions(\%opt, 'duration=i', 'rounds=i', 'clients=i', 'batch=i', 'only=s', 'help')
    or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1 || $opt{clients} < 1 || $opt{batch} < 1;
usage(2) if $opt{only} ne '' && $opt{only} !~ /^(pagi|mojo)$/;

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/sse-fanout.pl [--duration SECONDS] [--rounds N] [--clients N] [--batch N] [--only pagi|mojo]
  --duration  length of each measured window (default 5)
  --rounds    interleaved rounds per server (default 3)
  --clients   SSE clients per round (default 50)
  --batch     events the hub publishes per batch (default 50)
  --only      run one server (no ratio); for checking the harness
USAGE
    exit $_[0];
}

# Paths in the commands are relative to the repo root.
chdir_repo_root();

my @servers;
push @servers, { name => 'pagi', cmd => \@PAGI_CMD } if $opt{only} ne 'mojo';
push @servers, { name => 'mojo', cmd => \@MOJO_CMD } if $opt{only} ne 'pagi';

check_tools();

my $stamp   = timestamp();
my $out_dir = results_dir();
trap_signals();    # PAGI::Bench's END stops the servers on any exit
$SIG{PIPE} = 'IGNORE';
$| = 1;    # progress lines in order with errors, also when piped

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{log}  = "$out_dir/$stamp-$s->{name}.log.tmp";
    start_server($s, env => { SSE_FANOUT_BATCH => $opt{batch} });
}
$_->{probe} = wait_ready($_, timeout => $READY_TIMEOUT) for @servers;
check_same_response(@servers) if @servers == 2;

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s, $opt{clients} clients)\n";
    session($s, $WARMUP);
}

run_rounds(
    rounds  => $opt{rounds},
    servers => \@servers,
    flip    => 1,
    run     => sub { session($_[0], $opt{duration}) },
    report  => sub {
        my ($s, $res) = @_;
        printf "round %d %-5s %10.0f events/s  server CPU %3.0f%%  client CPU %3.0f%%  per client %d..%d%s\n",
            $res->{round}, $s->{name}, $res->{eps}, $res->{server_cpu}, $res->{client_cpu},
            $res->{min_client}, $res->{max_client},
            $res->{id_mismatch} ? "  ID MISMATCH on $res->{id_mismatch} clients" : '';
    },
);
record_rss(@servers);

my $summary = summary(@servers);
print "\n$summary";
save_results("$out_dir/$stamp-sse-fanout.txt", $summary, \@servers);

exit 0;    # END stops the servers

# ---------------------------------------------------------------------------

sub check_tools {
    if ($opt{only} ne 'pagi') {
        system($^X, '-MMojolicious', '-e1') == 0
            or die "Mojolicious is missing. Run ./setup.sh --bench first.\n";
    }
    # Runs from lib/ + blib/arch, so blib/lib is not needed.
    require_pagi_build() if $opt{only} ne 'mojo';
}

sub check_same_response {
    my ($x, $y) = @_;
    for my $field (qw(status body)) {
        die "servers answer GET / differently ($field): $x->{name}=$x->{probe}{$field} $y->{name}=$y->{probe}{$field}\n"
            . "is each running its bench/apps/sse-fanout* app?\n"
            if $x->{probe}{$field} ne $y->{probe}{$field};
    }
}

# --- The SSE clients ---------------------------------------------------------
# $opt{clients} connections read in one select loop. Each counts complete
# events (an event ends with a blank line, "\n\n"; chunked framing, if any,
# never holds one) and remembers the last `id:` seen, so that a window's
# count can be checked against the ids: every client gets every event.

sub session {
    my ($s, $seconds) = @_;
    my $sel = IO::Select->new;
    my %by_fd;
    my @clients;
    for my $i (1 .. $opt{clients}) {
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $s->{port}, Timeout => 5)
            or die "client $i cannot connect to $s->{name}: $@\n";
        my $c = { n => $i, sock => $sock, head => undef, buf => '', events => 0, last_id => 0 };
        syswrite $sock, "GET /events HTTP/1.1\r\nHost: 127.0.0.1:$s->{port}\r\n"
            . "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";
        $sel->add($sock);
        $by_fd{ fileno $sock } = $c;
        push @clients, $c;
    }
    my $pump = sub {
        my ($until) = @_;
        while ((my $left = $until - time) > 0) {
            for my $sock ($sel->can_read($left)) {
                my $c = $by_fd{ fileno $sock };
                my $n = sysread $sock, $c->{buf}, $READ_SIZE, length $c->{buf};
                if (!$n) {
                    die "$s->{name}: client $c->{n} lost its connection ("
                        . (defined $n ? 'closed by the server' : $!) . ")\n";
                }
                consume($s, $c);
            }
        }
    };
    my $deadline = time + $CONNECT_TIMEOUT;
    until (!grep { !$_->{events} } @clients) {
        die "$s->{name}: only " . scalar(grep { $_->{events} } @clients)
            . " of $opt{clients} clients got an event within ${CONNECT_TIMEOUT}s; see $s->{log}\n"
            if time > $deadline;
        $pump->(time + 0.05);
    }
    $pump->(time + $SETTLE);

    my @start = map { [ $_->{events}, $_->{last_id} ] } @clients;
    my $cpu0  = tree_cpu_ticks($s->{pid});
    my @me0   = times;
    my $t0    = time;
    $pump->($t0 + $seconds);
    my $elapsed = time - $t0;
    my @me1   = times;
    my $cpu1  = tree_cpu_ticks($s->{pid});
    my @got   = map { $clients[$_]{events} - $start[$_][0] } 0 .. $#clients;
    my @ids   = map { $clients[$_]{last_id} - $start[$_][1] } 0 .. $#clients;

    close $_->{sock} for @clients;
    die "$s->{name} died during the run; see $s->{log}\n" if server_died($s);
    sleep 0.5;    # let the server see the clients go before the next session

    my $hz    = clock_ticks();
    my $total = sum0(@got);
    my $raw   = sprintf "window %.3f s, %d clients, %d events, status %s, content-type %s\n",
        $elapsed, scalar @clients, $total, $clients[0]{status}, $clients[0]{type};
    $raw .= sprintf "server CPU %.2f s, client CPU %.2f s\n",
        ($cpu1 - $cpu0) / $hz, ($me1[0] + $me1[1]) - ($me0[0] + $me0[1]);
    $raw .= "events per client: @got\n";
    $raw .= "id advance per client: @ids\n";
    return {
        eps         => $total / $elapsed,
        server_cpu  => 100 * ($cpu1 - $cpu0) / $hz / $elapsed,
        client_cpu  => 100 * (($me1[0] + $me1[1]) - ($me0[0] + $me0[1])) / $elapsed,
        min_client  => min(@got),
        max_client  => max(@got),
        id_mismatch => scalar(grep { $got[$_] != $ids[$_] } 0 .. $#got),
        events      => $total,
        raw         => $raw,
    };
}

# Takes the response head, then the complete events, from $c->{buf}.
sub consume {
    my ($s, $c) = @_;
    if (!defined $c->{head}) {
        my $end = index $c->{buf}, "\r\n\r\n";
        return if $end < 0;
        $c->{head} = substr $c->{buf}, 0, $end + 4, '';
        my ($status) = $c->{head} =~ m{\AHTTP/1\.[01] (\d{3})};
        my ($type)   = $c->{head} =~ m{^content-type:\s*([^\r;]+)}mi;
        die "$s->{name}: client $c->{n} got no event stream:\n$c->{head}\n"
            unless ($status // '') eq '200' && ($type // '') eq 'text/event-stream';
        @$c{qw(status type)} = ($status, $type);
    }
    my $end = rindex $c->{buf}, "\n\n";
    return if $end < 0;
    my $done = substr $c->{buf}, 0, $end + 2, '';
    my $n = () = $done =~ /\n\n/g;
    $c->{events} += $n;
    my $tail = substr $done, -200;    # the last event, whole
    $c->{last_id} = $1 if $tail =~ /.*^id: (\d+)$/ms;
}

# --- Figures -----------------------------------------------------------------

sub one_line {
    my ($code) = @_;
    my $v = `$^X -e '$code' 2>/dev/null` // '';
    chomp $v;
    return $v || 'unknown';
}

sub summary {
    my @servers = @_;
    my $text    = "pagi-server vs Mojolicious, SSE fan-out, $stamp\n" . host_info();
    $text .= "loops: pagi " . one_line('use IO::Async::Loop; print ref IO::Async::Loop->new')
        . ", mojo " . one_line('use Mojolicious; use Mojo::IOLoop; print ref(Mojo::IOLoop->singleton->reactor), " (Mojolicious ", Mojolicious->VERSION, ")"') . "\n";
    $text .= "load: $opt{clients} SSE clients, batches of $opt{batch} events (64-byte data), "
        . "$opt{duration}s windows, $opt{rounds} interleaved rounds, medians below\n";
    $text .= "$_->{name}: $_->{cmdline}\n" for @servers;
    $text .= "\n";
    $text .= sprintf "%-6s %12s %12s %12s %14s %10s\n",
        'server', 'events/s', 'server CPU', 'client CPU', 'CPU us/event', 'RSS kB';
    for my $s (@servers) {
        my @runs = @{ $s->{runs} };
        $s->{med_eps} = median(map { $_->{eps} } @runs);
        my $cpu_us = median(map { $_->{eps} ? $_->{server_cpu} / 100 * 1e6 / $_->{eps} : 0 } @runs);
        $text .= sprintf "%-6s %12.0f %11.0f%% %11.0f%% %14.2f %10d\n",
            $s->{name}, $s->{med_eps}, median(map { $_->{server_cpu} } @runs),
            median(map { $_->{client_cpu} } @runs), $cpu_us, rss_total($s);
    }
    if (@servers == 2 && $servers[1]{med_eps} > 0) {
        $text .= sprintf "\nratio pagi/mojo (events/s): %.2f\n",
            $servers[0]{med_eps} / $servers[1]{med_eps};
    }
    my @bad = map { my $s = $_; map { "$s->{name} round $_->{round}" } grep { $_->{id_mismatch} } @{ $s->{runs} } } @servers;
    $text .= @bad
        ? "\nWARNING: event counts and ids disagree (lost or repeated events) in: @bad\n"
        : "\nevery client's event count matched its id advance (no event lost or repeated)\n";
    $text .= rss_section(@servers);
    $text .= "CPU %: of one core over the window (server process tree; client = this script).\n";
    $text .= "CPU us/event: server CPU time / events delivered (one event to one client).\n";
    return $text;
}
