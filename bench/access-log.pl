#!/usr/bin/env perl
# What the access log costs: the same hello world from pagi-server (blib/)
# with --no-access-log and with --access-log FILE, loaded alike with wrk.
# Usage (from the repo root, after `make`):
#   perl bench/access-log.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use Getopt::Long qw(GetOptions);
use PAGI::Bench qw(:all);

my $CONNECTIONS   = 50;
my $READY_TIMEOUT = 15;    # seconds a server gets to answer its first request
my $WARMUP        = 1;     # seconds of unrecorded load per server before round 1

my %opt = (duration => 5, rounds => 3);
GetOptions(\%opt, 'duration=i', 'rounds=i', 'help') or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1;

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/access-log.pl [--duration SECONDS] [--rounds N]
  --duration  length of each wrk run (default 5)
  --rounds    interleaved rounds per server (default 3)
USAGE
    exit $_[0];
}

chdir_repo_root();
require_tools('wrk');
require_pagi_build(lib => 1);

# The log file of the logged server: a temp file, removed at exit.
my $log_tmp = File::Temp->new(DIR => '/tmp', TEMPLATE => 'pagi-access-log-bench-XXXXXX', SUFFIX => '.log', UNLINK => 1);
my $log_file = $log_tmp->filename;

my @base = ($^X, '-Mblib', 'bin/pagi-server', '--app', 'bench/apps/hello.pl', '--quiet',
            '--host', '127.0.0.1', '--port', '%PORT%');
my @servers = (
    { name => 'unlogged', cmd => [ @base, '--no-access-log' ] },
    { name => 'logged',   cmd => [ @base, '--access-log', $log_file ] },
);

my $stamp   = timestamp();
my $out_dir = results_dir();
trap_signals();    # PAGI::Bench's END stops the servers on any exit

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{log}  = "$out_dir/$stamp-access-log-$s->{name}.out.tmp";
    # The temp name changes every run; keep it out of the summary.
    start_server($s, show => sub { $_[0] eq $log_file ? '/tmp/<temp>.log' : $_[0] });
}
# Ready means a 200, not just any answer.
wait_ready($_, timeout => $READY_TIMEOUT,
    check => sub { my $r = http_get($_[0]); $r && $r->{status} eq '200' }) for @servers;

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s)\n";
    run_wrk($s, $WARMUP, $CONNECTIONS);
}
my $lines_before = count_lines($log_file);

run_rounds(
    rounds  => $opt{rounds},
    servers => \@servers,
    flip    => 1,
    run     => sub { run_wrk($_[0], $opt{duration}, $CONNECTIONS) },
    report  => sub {
        my ($s, $res) = @_;
        printf "round %d %-9s %10.0f req/s  p99 %8.2f ms\n", $res->{round}, $s->{name}, $res->{rps}, $res->{p99_ms};
    },
);

stop_all(grace => 10);    # the logged server writes any pending lines as it shuts down
my $lines = count_lines($log_file) - $lines_before;
my $requests = 0;
$requests += $_->{requests} for @{ $servers[1]{runs} };

my $summary = summary($lines, $requests);
print "\n$summary";
save_results("$out_dir/$stamp-access-log.txt", $summary, \@servers);
exit 0;

# ---------------------------------------------------------------------------

sub count_lines {
    my ($path) = @_;
    open my $fh, '<', $path or return 0;
    my $n = 0;
    $n++ while <$fh>;
    return $n;
}

sub summary {
    my ($lines, $requests) = @_;
    my $text = "pagi-server access log cost, hello world, $stamp\n" . host_info()
        . "load: wrk -t1 -c$CONNECTIONS -d$opt{duration}s --latency, $opt{rounds} interleaved rounds, medians below\n";
    $text .= "$_->{name}: $_->{cmdline}\n" for @servers;
    $text .= sprintf "\n%-9s %12s %10s\n", 'server', 'req/s', 'p99 ms';
    for my $s (@servers) {
        $s->{med_rps} = median(map { $_->{rps} } @{ $s->{runs} });
        $text .= sprintf "%-9s %12.0f %10.2f\n", $s->{name}, $s->{med_rps}, median(map { $_->{p99_ms} } @{ $s->{runs} });
    }
    my ($off, $on) = @servers;
    $text .= sprintf "\nratio logged/unlogged (req/s): %.3f\n", $on->{med_rps} / $off->{med_rps} if $off->{med_rps} > 0;
    $text .= "log lines written during the rounds: $lines (wrk counted $requests completed requests)\n";
    return $text;
}
