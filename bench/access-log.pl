#!/usr/bin/env perl
# What the access log costs: the same hello world from pagi-server (blib/)
# with --no-access-log and with --access-log FILE, loaded alike with wrk.
# Usage (from the repo root, after `make`):
#   perl bench/access-log.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp ();
use Getopt::Long qw(GetOptions);
use IO::Select;
use IO::Socket::IP;
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(sleep time);

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

chdir(dirname(dirname(abs_path(__FILE__)))) or die "chdir to repo root: $!\n";

for my $tool ('wrk') {
    die "missing: $tool. Run ./setup.sh --bench first.\n"
        unless grep { -x "$_/$tool" } split /:/, ($ENV{PATH} // '');
}
die "blib/ not built: run perl Makefile.PL && make first.\n" unless -d 'blib/arch' && -d 'blib/lib';

# The log file of the logged server: a temp file, removed at exit.
my $log_tmp = File::Temp->new(DIR => '/tmp', TEMPLATE => 'pagi-access-log-bench-XXXXXX', SUFFIX => '.log', UNLINK => 1);
my $log_file = $log_tmp->filename;

my @base = ($^X, '-Mblib', 'bin/pagi-server', '--app', 'bench/apps/hello.pl', '--quiet',
            '--host', '127.0.0.1', '--port', '%PORT%');
my @servers = (
    { name => 'unlogged', cmd => [ @base, '--no-access-log' ] },
    { name => 'logged',   cmd => [ @base, '--access-log', $log_file ] },
);

my $stamp   = strftime('%Y%m%dT%H%M%SZ', gmtime);
my $out_dir = 'bench/results';
make_path($out_dir);

my %running;    # pid => server
END {
    stop_servers();
    unlink grep { defined } map { $_->{out} } @servers if $? == 0 || $? == 130;
}
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { warn "\ninterrupted, stopping servers\n"; exit 130 };

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{out}  = "$out_dir/$stamp-access-log-$s->{name}.out.tmp";
    launch($s);
}
wait_ready($_) for @servers;

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s)\n";
    run_wrk($s, $WARMUP);
}
my $lines_before = count_lines($log_file);

# Interleaved, and the order flips each round, so drift hits both alike.
for my $round (1 .. $opt{rounds}) {
    my @order = $round % 2 ? @servers : reverse @servers;
    for my $s (@order) {
        my $res = run_wrk($s, $opt{duration});
        $res->{round} = $round;
        push @{ $s->{runs} }, $res;
        printf "round %d %-9s %10.0f req/s  p99 %8.2f ms\n", $round, $s->{name}, $res->{rps}, $res->{p99_ms};
    }
}

stop_servers();    # the logged server writes any pending lines as it shuts down
my $lines = count_lines($log_file) - $lines_before;
my $requests = 0;
$requests += $_->{requests} for @{ $servers[1]{runs} };

my $summary = summary($lines, $requests);
print "\n$summary";
my $file = "$out_dir/$stamp-access-log.txt";
open my $fh, '>', $file or die "write $file: $!\n";
print {$fh} $summary;
for my $s (@servers) {
    print {$fh} "\n===== $s->{name} round $_->{round} =====\n$_->{raw}" for @{ $s->{runs} };
}
close $fh or die "write $file: $!\n";
print "saved $file\n";
exit 0;

# ---------------------------------------------------------------------------

sub free_port {
    my $sock = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1)
        or die "cannot bind a free port: $@\n";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

sub launch {
    my ($s) = @_;
    my @cmd = map { s/%PORT%/$s->{port}/gr } @{ $s->{cmd} };
    $s->{cmdline} = join ' ', map { $_ eq $log_file ? '/tmp/<temp>.log' : $_ } @cmd;
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDIN,  '<', '/dev/null';
        open STDOUT, '>', $s->{out};
        open STDERR, '>&', \*STDOUT;
        $ENV{PAGI_ENV} = 'production';
        { exec { $cmd[0] } @cmd }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);
    }
    $s->{pid} = $pid;
    $running{$pid} = $s;
    print "started $s->{name} (pid $pid): $s->{cmdline}\n";
}

sub stop_servers {
    return unless %running;
    local $?;
    my @pids = keys %running;
    kill 'TERM', -$_, $_ for @pids;
    my $deadline = time + 10;
    while (%running && time < $deadline) {
        for my $pid (keys %running) {
            delete $running{$pid} if waitpid($pid, WNOHANG) != 0;
        }
        sleep 0.05;
    }
    for my $pid (keys %running) {
        kill 'KILL', -$pid, $pid;
        waitpid($pid, 0);
    }
    %running = ();
}

sub exited {
    my ($s) = @_;
    return 0 unless $running{ $s->{pid} } && waitpid($s->{pid}, WNOHANG) == $s->{pid};
    delete $running{ $s->{pid} };
    return 1;
}

sub wait_ready {
    my ($s) = @_;
    my $deadline = time + $READY_TIMEOUT;
    while (time < $deadline) {
        die "$s->{name} exited during startup; its output:\n" . (slurp($s->{out}) // '') if exited($s);
        return if probe($s->{port});
        sleep 0.1;
    }
    die "$s->{name} did not answer on 127.0.0.1:$s->{port} within ${READY_TIMEOUT}s; see $s->{out}\n";
}

# True once a GET / gets a 200.
sub probe {
    my ($port) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 1) or return 0;
    print {$sock} "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    my ($buf, $sel, $deadline) = ('', IO::Select->new($sock), time + 5);
    while (time < $deadline && $sel->can_read(0.5)) {
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    return $buf =~ m{\AHTTP/1\.1 200 } ? 1 : 0;
}

sub run_wrk {
    my ($s, $seconds) = @_;
    my @cmd = ('wrk', '-t1', "-c$CONNECTIONS", "-d${seconds}s", '--latency', "http://127.0.0.1:$s->{port}/");
    open my $pipe, '-|', @cmd or die "run wrk: $!\n";
    my $raw = do { local $/; <$pipe> };
    close $pipe;
    die "wrk failed (status $?) against $s->{name}:\n$raw" if $? != 0;
    die "$s->{name} died during the run; see $s->{out}\n" if exited($s);
    my ($rps)      = $raw =~ /^Requests\/sec:\s+([\d.]+)/m;
    my ($p99, $u)  = $raw =~ /^\s+99%\s+([\d.]+)(us|ms|s|m|h)\b/m;
    my ($requests) = $raw =~ /^\s+(\d+) requests in /m;
    die "cannot parse wrk output for $s->{name}:\n$raw" unless defined $rps && defined $p99;
    warn "warning: $s->{name}: $1\n" while $raw =~ /^\s*((?:Socket errors|Non-2xx).*)$/mg;
    my %to_ms = (us => 0.001, ms => 1, s => 1000, m => 60_000, h => 3_600_000);
    return { rps => $rps, p99_ms => $p99 * $to_ms{$u}, requests => $requests // 0, raw => $raw };
}

sub count_lines {
    my ($path) = @_;
    open my $fh, '<', $path or return 0;
    my $n = 0;
    $n++ while <$fh>;
    return $n;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return;
    local $/;
    return scalar <$fh>;
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub summary {
    my ($lines, $requests) = @_;
    chomp(my $commit = `git rev-parse --short HEAD 2>/dev/null` // '');
    my ($perl_v) = grep { /\S/ } `$^X -v`;
    chomp $perl_v;
    chomp(my $nproc = `nproc 2>/dev/null` || 'unknown');
    my $text = "pagi-server access log cost, hello world, $stamp\n"
        . 'commit: ' . ($commit || 'none') . "\nnproc: $nproc\nperl: $perl_v\n"
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
