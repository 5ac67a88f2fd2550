#!/usr/bin/env perl
# Hello-world throughput: pagi-server (this dist, from blib/) vs Starman, one run.
# With --psgi, pagi-server serves the very PSGI file Starman does, through
# PAGI::App::WrapPSGI (one process against one Starman worker).
# Usage (from the repo root, after `make`): perl bench/compare-starman.pl [--psgi] [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Getopt::Long qw(GetOptions);
use PAGI::Bench qw(:all);

# --- What runs. Placeholders: %PORT% is filled per server. -------------------
# PAGI_ENV=production keeps the runner from adding dev-mode middleware.
my @PAGI_CMD = (
    $^X, '-Mblib', 'bin/pagi-server',
    '--app', 'bench/apps/hello.pl',
    '--host', '127.0.0.1', '--port', '%PORT%',
    '--quiet', '--no-access-log',
);
my @STARMAN_CMD = (
    'starman', '--workers', '1',
    '--listen', '127.0.0.1:%PORT%',
    '--access-log', '/dev/null',
    'bench/apps/hello.psgi',
);
my $CONNECTIONS   = 50;
my $READY_TIMEOUT = 15;    # seconds a server gets to start answering
my $WARMUP        = 1;     # seconds of unrecorded load per server before round 1

my %opt = (duration => 5, rounds => 3, only => '');
GetOptions(\%opt, 'duration=i', 'rounds=i', 'only=s', 'psgi', 'help')
    or usage(2);
# --psgi: the same app file for both servers; `pagi-server FILE.psgi` wraps it.
if ($opt{psgi}) { s{\Abench/apps/hello\.pl\z}{bench/apps/hello.psgi} for @PAGI_CMD }
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1;
usage(2) if $opt{only} ne '' && $opt{only} !~ /^(pagi|starman)$/;

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/compare-starman.pl [--psgi] [--duration SECONDS] [--rounds N] [--only pagi|starman]
  --psgi      pagi-server serves bench/apps/hello.psgi through PAGI::App::WrapPSGI
  --duration  length of each wrk run (default 5)
  --rounds    interleaved rounds per server (default 3)
  --only      run one server (no ratio); for checking the harness
USAGE
    exit $_[0];
}

# Paths in the commands are relative to the repo root.
chdir_repo_root();

my @servers;
push @servers, { name => 'pagi',    cmd => \@PAGI_CMD }    if $opt{only} ne 'starman';
push @servers, { name => 'starman', cmd => \@STARMAN_CMD } if $opt{only} ne 'pagi';

require_tools('wrk', ($opt{only} eq 'pagi' ? () : 'starman'));
require_pagi_build(lib => 1) if $opt{only} ne 'starman';

my $stamp   = timestamp();
my $out_dir = results_dir();
trap_signals();    # PAGI::Bench's END stops the servers on any exit

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{log}  = "$out_dir/$stamp-$s->{name}.log.tmp";
    start_server($s);
}
$_->{probe} = wait_ready($_, timeout => $READY_TIMEOUT) for @servers;
check_same_response(@servers) if @servers == 2;

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s)\n";
    run_wrk($s, $WARMUP, $CONNECTIONS);
}

run_rounds(
    rounds  => $opt{rounds},
    servers => \@servers,
    cpu     => 1,
    run     => sub { run_wrk($_[0], $opt{duration}, $CONNECTIONS) },
    report  => sub {
        my ($s, $res) = @_;
        printf "round %d %-8s %10.0f req/s  p99 %8.2f ms\n",
            $res->{round}, $s->{name}, $res->{rps}, $res->{p99_ms};
    },
);
record_rss(@servers);

my $summary = summary(@servers);
print "\n$summary";
save_results("$out_dir/$stamp-" . ($opt{psgi} ? 'psgi' : 'starman') . '.txt', $summary, \@servers);

exit 0;    # END stops the servers

# ---------------------------------------------------------------------------

# Status, content type and body must match, or the figures compare different work.
sub check_same_response {
    my ($x, $y) = @_;
    my @diff;
    for my $field (qw(status content-type body)) {
        my ($vx, $vy) = map {
            $field eq 'status' ? $_->{probe}{status}
            : $field eq 'body' ? $_->{probe}{body}
            :                    $_->{probe}{headers}{$field} // '(none)'
        } $x, $y;
        push @diff, sprintf "%s: %s=%s %s=%s", $field, $x->{name}, dq($vx), $y->{name}, dq($vy)
            if $vx ne $vy;
    }
    die "servers answer differently, not a fair comparison:\n  " . join("\n  ", @diff) . "\n"
        if @diff;
    print "both answer $x->{probe}{status} with body ", dq($x->{probe}{body}), "\n";
}

sub dq {
    my ($v) = @_;
    $v =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return qq{"$v"};
}

sub summary {
    my @servers = @_;
    my $hz      = clock_ticks();
    my $what    = $opt{psgi} ? 'PSGI hello world: pagi-server + PAGI::App::WrapPSGI vs Starman' : 'pagi-server vs Starman, hello world';
    my $text    = "$what, $stamp\n" . host_info();
    $text .= "load: wrk -t1 -c$CONNECTIONS -d$opt{duration}s --latency, "
        . "$opt{rounds} interleaved rounds, medians below\n";
    $text .= "$_->{name}: $_->{cmdline}\n" for @servers;
    $text .= "\n";
    $text .= sprintf "%-8s %12s %10s %14s %10s\n",
        'server', 'req/s', 'p99 ms', 'CPU us/req', 'RSS kB';
    for my $s (@servers) {
        my @runs = @{ $s->{runs} };
        $s->{med_rps} = median(map { $_->{rps} } @runs);
        my $cpu_us = median(map { $_->{requests} ? $_->{cpu_ticks} / $hz * 1e6 / $_->{requests} : 0 } @runs);
        $text .= sprintf "%-8s %12.0f %10.2f %14.1f %10d\n",
            $s->{name}, $s->{med_rps}, median(map { $_->{p99_ms} } @runs), $cpu_us, rss_total($s);
    }
    if (@servers == 2 && $servers[1]{med_rps} > 0) {
        $text .= sprintf "\nratio pagi/starman (req/s): %.2f\n",
            $servers[0]{med_rps} / $servers[1]{med_rps};
    }
    $text .= rss_section(@servers);
    $text .= "CPU us/req: server process tree CPU time during the round / requests wrk completed.\n";
    return $text;
}
