#!/usr/bin/env perl
# What PAGI::Simple costs per request: its hello and JSON routes under
# pagi-server, against the same two routes as a raw PAGI app on the same
# server and under Mojolicious::Lite, all in one run.
# Usage (from the repo root, after `make`): perl bench/compare-simple.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Getopt::Long qw(GetOptions);
use PAGI::Bench qw(:all);

# --- What runs. Placeholders: %PORT% is filled per server. -------------------
# lib/ before blib/arch, as the test suite does: PAGI::Simple from the
# checkout, the compiled engine from the build. PAGI_ENV=production (set by
# start_server) keeps the runner from adding dev-mode middleware.
my @PAGI = ($^X, '-Ilib', '-Iblib/arch', 'bin/pagi-server');
my @PAGI_OPTS = ('--host', '127.0.0.1', '--port', '%PORT%', '--quiet', '--no-access-log');
my %CMD = (
    simple => [ @PAGI, '--app', 'bench/apps/simple-hello.pl',     @PAGI_OPTS ],
    raw    => [ @PAGI, '--app', 'bench/apps/simple-hello-raw.pl', @PAGI_OPTS ],
    mojo   => [ $^X, 'bench/apps/simple-hello-mojo.pl', 'daemon',
                '--mode', 'production', '--listen', 'http://127.0.0.1:%PORT%' ],
);
my @SERVERS = qw(simple raw mojo);
my %ROUTES = (hello => '/', json => '/users/42');
my @ROUTES = qw(hello json);
my $CONNECTIONS   = 50;
my $READY_TIMEOUT = 15;    # seconds a server gets to start answering
my $WARMUP        = 1;     # seconds of unrecorded load per scenario before round 1

my %opt = (duration => 5, rounds => 3);
GetOptions(\%opt, 'duration=i', 'rounds=i', 'help') or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1;

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/compare-simple.pl [--duration SECONDS] [--rounds N]
  --duration  length of each wrk run (default 5)
  --rounds    interleaved rounds per scenario (default 3)
USAGE
    exit $_[0];
}

# Paths in the commands are relative to the repo root.
chdir_repo_root();
require_tools('wrk');
require_pagi_build();
die "Mojolicious is not installed: run ./setup.sh --bench first.\n"
    unless eval { require Mojolicious; 1 };

my $stamp   = timestamp();
my $out_dir = results_dir();
trap_signals();    # PAGI::Bench's END stops the servers on any exit
$| = 1;

my %server;
for my $name (@SERVERS) {
    my $s = $server{$name} = { name => $name, cmd => $CMD{$name} };
    $s->{port} = free_port();
    $s->{log}  = "$out_dir/$stamp-$name.log.tmp";
    start_server($s);
}
wait_ready($_, timeout => $READY_TIMEOUT) for values %server;

# One scenario per server and route; they share the server's process, so
# CPU per request is that process's CPU during the scenario's own wrk run.
my @scenarios;
for my $route (@ROUTES) {
    for my $name (@SERVERS) {
        my $s = $server{$name};
        push @scenarios, { %$s, name => "$name-$route", server => $name, route => $route,
            path => $ROUTES{$route}, runs => [] };
    }
}
check_same_responses();

for my $sc (@scenarios) {
    print "warm-up $sc->{name} (${WARMUP}s)\n";
    run_wrk($sc, $WARMUP, $CONNECTIONS);
}

run_rounds(
    rounds  => $opt{rounds},
    servers => \@scenarios,
    cpu     => 1,
    flip    => 1,
    run     => sub { run_wrk($_[0], $opt{duration}, $CONNECTIONS) },
    report  => sub {
        my ($sc, $res) = @_;
        printf "round %d %-12s %10.0f req/s  p99 %8.2f ms\n",
            $res->{round}, $sc->{name}, $res->{rps}, $res->{p99_ms};
    },
);
record_rss(map { $server{$_} } @SERVERS);

my $summary = summary();
print "\n$summary";
save_results("$out_dir/$stamp-simple.txt", $summary, \@scenarios);

exit 0;    # END stops the servers

# ---------------------------------------------------------------------------

# Status, content type and body must match on every route, or the figures
# compare different work.
sub check_same_responses {
    my @diff;
    for my $route (@ROUTES) {
        my %got;
        for my $name (@SERVERS) {
            my $r = http_get($server{$name}{port}, $ROUTES{$route})
                or die "$name did not answer GET $ROUTES{$route}\n";
            $got{$name} = join ' | ', $r->{status}, $r->{headers}{'content-type'} // '(none)', dq($r->{body});
        }
        for my $name (@SERVERS[1 .. $#SERVERS]) {
            push @diff, "GET $ROUTES{$route}: $SERVERS[0]=$got{$SERVERS[0]}  $name=$got{$name}"
                if $got{$name} ne $got{ $SERVERS[0] };
        }
        print "GET $ROUTES{$route}: all answer $got{simple}\n";
    }
    die "servers answer differently, not a fair comparison:\n  " . join("\n  ", @diff) . "\n" if @diff;
}

sub dq {
    my ($v) = @_;
    $v =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return qq{"$v"};
}

sub summary {
    my $hz   = clock_ticks();
    my $text = "PAGI::Simple vs raw PAGI (both pagi-server) vs Mojolicious::Lite, $stamp\n" . host_info();
    my $mojo_v = Mojolicious->VERSION;
    $text .= "Mojolicious: $mojo_v\n";
    $text .= "load: wrk -t1 -c$CONNECTIONS -d$opt{duration}s --latency, "
        . "$opt{rounds} interleaved rounds (order flipped every other round), medians below\n";
    $text .= "$_: $server{$_}{cmdline}\n" for @SERVERS;
    $text .= "routes: " . join(', ', map {"$_ = GET $ROUTES{$_}"} @ROUTES) . "\n\n";
    $text .= sprintf "%-12s %12s %10s %14s\n", 'scenario', 'req/s', 'p99 ms', 'CPU us/req';
    my %m;
    for my $sc (@scenarios) {
        my @runs = @{ $sc->{runs} };
        my $f = $m{ $sc->{server} }{ $sc->{route} } = {
            rps => median(map { $_->{rps} } @runs),
            p99 => median(map { $_->{p99_ms} } @runs),
            cpu => median(map { $_->{requests} ? $_->{cpu_ticks} / $hz * 1e6 / $_->{requests} : 0 } @runs),
        };
        $text .= sprintf "%-12s %12.0f %10.2f %14.1f\n", $sc->{name}, @$f{qw(rps p99 cpu)};
    }
    $text .= "\n";
    for my $route (@ROUTES) {
        my ($s, $r, $mj) = map { $m{$_}{$route} } qw(simple raw mojo);
        $text .= sprintf "%-5s Simple/raw %.2fx  Simple/Mojo %.2fx  framework cost %.1f us/req (CPU Simple - raw)\n",
            $route, ($r->{rps} ? $s->{rps} / $r->{rps} : 0), ($mj->{rps} ? $s->{rps} / $mj->{rps} : 0),
            $s->{cpu} - $r->{cpu};
    }
    $text .= "goal (hello): Simple/raw >= 0.6x, Simple/Mojo >= 5x\n";
    $text .= rss_section(map { $server{$_} } @SERVERS);
    $text .= "CPU us/req: server process tree CPU time during the run / requests wrk completed.\n";
    return $text;
}
