#!/usr/bin/env perl
# Hello-world throughput: pagi-server (this dist, from blib/) vs Starman, one run.
# Usage (from the repo root, after `make`): perl bench/compare-starman.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use Getopt::Long qw(GetOptions);
use IO::Select;
use IO::Socket::IP;
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(sleep time);

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
GetOptions(\%opt, 'duration=i', 'rounds=i', 'only=s', 'help')
    or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{duration} < 1 || $opt{rounds} < 1;
usage(2) if $opt{only} ne '' && $opt{only} !~ /^(pagi|starman)$/;

sub usage {
    print STDERR <<"USAGE";
usage: perl bench/compare-starman.pl [--duration SECONDS] [--rounds N] [--only pagi|starman]
  --duration  length of each wrk run (default 5)
  --rounds    interleaved rounds per server (default 3)
  --only      run one server (no ratio); for checking the harness
USAGE
    exit $_[0];
}

# Paths in the commands are relative to the repo root.
chdir(dirname(dirname(abs_path(__FILE__)))) or die "chdir to repo root: $!\n";

my @servers;
push @servers, { name => 'pagi',    cmd => \@PAGI_CMD }    if $opt{only} ne 'starman';
push @servers, { name => 'starman', cmd => \@STARMAN_CMD } if $opt{only} ne 'pagi';

check_tools();

my $stamp   = strftime('%Y%m%dT%H%M%SZ', gmtime);
my $out_dir = 'bench/results';
make_path($out_dir);

# Servers get their own process group so one kill reaches Starman's worker too,
# and so cleanup runs on normal exit, die, and INT/TERM alike.
my %running;    # pid => server
END {
    stop_all();
    # Server logs matter only when something failed; an interrupt (130) is not a failure.
    unlink grep { defined } map { $_->{log} } @servers if $? == 0 || $? == 130;
}
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { warn "\ninterrupted, stopping servers\n"; exit 130 };

for my $s (@servers) {
    $s->{port} = free_port();
    $s->{log}  = "$out_dir/$stamp-$s->{name}.log.tmp";
    start_server($s);
}
for my $s (@servers) {
    $s->{probe} = wait_ready($s);
}
check_same_response(@servers) if @servers == 2;

for my $s (@servers) {
    print "warm-up $s->{name} (${WARMUP}s)\n";
    run_wrk($s, $WARMUP);
}

# Interleaved so drift on a shared machine hits both servers alike.
for my $round (1 .. $opt{rounds}) {
    for my $s (@servers) {
        my $cpu0 = tree_cpu_ticks($s->{pid});
        my $res  = run_wrk($s, $opt{duration});
        $res->{cpu_ticks} = tree_cpu_ticks($s->{pid}) - $cpu0;
        $res->{round}     = $round;
        push @{ $s->{runs} }, $res;
        printf "round %d %-8s %10.0f req/s  p99 %8.2f ms\n",
            $round, $s->{name}, $res->{rps}, $res->{p99_ms};
    }
}

for my $s (@servers) {
    $s->{rss} = tree_rss($s->{pid});
}

my $summary = summary(@servers);
print "\n$summary";

my $file = "$out_dir/$stamp-starman.txt";
open my $fh, '>', $file or die "write $file: $!\n";
print {$fh} $summary;
for my $s (@servers) {
    for my $r (@{ $s->{runs} }) {
        print {$fh} "\n===== $s->{name} round $r->{round} =====\n$r->{raw}";
    }
}
close $fh or die "write $file: $!\n";
print "saved $file\n";

exit 0;    # END stops the servers

# ---------------------------------------------------------------------------

sub check_tools {
    my @missing = grep { !in_path($_) } 'wrk', ($opt{only} eq 'pagi' ? () : 'starman');
    die "missing: @missing. Run ./setup.sh --bench first.\n" if @missing;
    return if $opt{only} eq 'starman';
    die "bin/pagi-server not found: run this from a PAGI-Server-Native checkout.\n"
        unless -f 'bin/pagi-server';
    die "blib/ not built: run perl Makefile.PL && make first.\n"
        unless -d 'blib/arch' && -d 'blib/lib';
}

sub in_path {
    my ($prog) = @_;
    return scalar grep { -x "$_/$prog" } split /:/, ($ENV{PATH} // '');
}

# Bind port 0 and read back what the kernel chose; the tiny window before the
# server binds it is acceptable on a bench machine.
sub free_port {
    my $sock = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1)
        or die "cannot bind a free port: $@\n";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

sub start_server {
    my ($s) = @_;
    my @cmd = map { (my $a = $_) =~ s/%PORT%/$s->{port}/g; $a } @{ $s->{cmd} };
    $s->{cmdline} = join ' ', @cmd;
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDIN,  '<', '/dev/null';
        open STDOUT, '>', $s->{log};
        open STDERR, '>&', \*STDOUT;
        local $ENV{PAGI_ENV} = 'production';
        { exec { $cmd[0] } @cmd }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);    # never run the parent's END block here
    }
    $s->{pid} = $pid;
    $running{$pid} = $s;
    print "started $s->{name} (pid $pid): $s->{cmdline}\n";
}

sub stop_all {
    return unless %running;
    local $?;    # waitpid must not clobber the exit status when called from END
    my @groups = keys %running;    # each server's pid is also its process group id
    # TERM first so servers shut down cleanly, then KILL whatever lingers.
    kill 'TERM', -$_, $_ for @groups;
    my $deadline = time + 5;
    while (time < $deadline) {
        for my $pid (keys %running) {
            delete $running{$pid} if waitpid($pid, WNOHANG) != 0;
        }
        # Also wait for the group to empty: Starman's worker outlives its master briefly.
        last unless %running || grep { kill 0, -$_ } @groups;
        sleep 0.05;
    }
    kill 'KILL', -$_ for grep { kill 0, -$_ } @groups;
    waitpid($_, 0) for keys %running;
    %running = ();
}

sub server_died {
    my ($s) = @_;
    return 0 unless waitpid($s->{pid}, WNOHANG) == $s->{pid};
    delete $running{ $s->{pid} };
    return 1;
}

sub wait_ready {
    my ($s) = @_;
    my $deadline = time + $READY_TIMEOUT;
    while (time < $deadline) {
        if (server_died($s)) {
            die "$s->{name} exited during startup (wait status $?, exit code ${\($? >> 8)}). Its output, kept in $s->{log}:\n"
                . slurp($s->{log});
        }
        my $res = http_get($s->{port});
        return $res if $res && $res->{status};
        sleep 0.1;
    }
    die "$s->{name} did not answer on 127.0.0.1:$s->{port} within ${READY_TIMEOUT}s; see $s->{log}\n";
}

# Minimal HTTP/1.1 GET with Connection: close; undef while the port is not up.
sub http_get {
    my ($port) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 1)
        or return;
    print {$sock} "GET / HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n\r\n";
    my ($buf, $sel, $deadline) = ('', IO::Select->new($sock), time + 5);
    while (time < $deadline) {
        last unless $sel->can_read(0.5);
        my $n = sysread $sock, $buf, 65536, length $buf;
        last unless $n;
    }
    close $sock;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    return unless defined $head && $head =~ m{^HTTP/1\.[01] (\d{3})};
    my %hdr;
    for (split /\r\n/, $head) {
        $hdr{ lc $1 } = $2 if /^([^:\s]+):\s*(.*)$/;
    }
    return { status => $1, headers => \%hdr, body => $body // '' };
}

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

sub run_wrk {
    my ($s, $seconds) = @_;
    my @cmd = ('wrk', '-t1', "-c$CONNECTIONS", "-d${seconds}s", '--latency',
        "http://127.0.0.1:$s->{port}/");
    open my $pipe, '-|', @cmd or die "run wrk: $!\n";
    my $raw = do { local $/; <$pipe> };
    close $pipe;
    die "wrk failed (status $?) against $s->{name}:\n$raw" if $? != 0;
    die "$s->{name} died during the run; see $s->{log}\n" if server_died($s);
    return parse_wrk($raw, $s->{name});
}

sub parse_wrk {
    my ($raw, $name) = @_;
    my ($rps)      = $raw =~ /^Requests\/sec:\s+([\d.]+)/m;
    my ($p99, $u)  = $raw =~ /^\s+99%\s+([\d.]+)(us|ms|s|m|h)\b/m;
    my ($requests) = $raw =~ /^\s+(\d+) requests in /m;
    die "cannot parse wrk output for $name:\n$raw" unless defined $rps && defined $p99;
    my %to_ms = (us => 0.001, ms => 1, s => 1000, m => 60_000, h => 3_600_000);
    # Errors or non-200s would make the req/s figure meaningless: say so loudly.
    warn "warning: $name: $1\n" while $raw =~ /^\s*((?:Socket errors|Non-2xx).*)$/mg;
    return { rps => $rps, p99_ms => $p99 * $to_ms{$u}, requests => $requests // 0, raw => $raw };
}

# The server plus its descendants (Starman serves from a forked worker).
sub process_tree {
    my ($root) = @_;
    my %kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        # Field 4 is the ppid; the command name in (...) may contain spaces.
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S+ (\d+)/s or next;
        push @{ $kids{$ppid} }, $pid;
    }
    my @tree = ($root);
    for (my $i = 0; $i < @tree; $i++) {
        push @tree, @{ $kids{ $tree[$i] } || [] };
    }
    return @tree;
}

sub tree_cpu_ticks {
    my $ticks = 0;
    for my $pid (process_tree(@_)) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $line = <$fh> // next;
        $line =~ s/^.*\) //s;
        my @f = split ' ', $line;
        $ticks += $f[11] + $f[12];    # utime + stime
    }
    return $ticks;
}

sub tree_rss {
    my @parts;
    for my $pid (process_tree(@_)) {
        my $status = slurp("/proc/$pid/status") // next;
        push @parts, [ $pid, $1 ] if $status =~ /^VmRSS:\s+(\d+)\s+kB/m;
    }
    return \@parts;
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
    my @servers = @_;
    my $hz      = eval { POSIX::sysconf(POSIX::_SC_CLK_TCK()) } || 100;
    my $text    = '';
    my $commit  = `git rev-parse --short HEAD 2>/dev/null` // '';
    chomp $commit;
    my ($perl_v) = grep { /\S/ } `$^X -v`;
    chomp $perl_v;
    chomp(my $nproc = `nproc 2>/dev/null` || 'unknown');

    $text .= "pagi-server vs Starman, hello world, $stamp\n";
    $text .= "commit: " . ($commit || 'none') . "\n";
    $text .= "nproc: $nproc\n";
    $text .= "perl: $perl_v\n";
    $text .= "load: wrk -t1 -c$CONNECTIONS -d$opt{duration}s --latency, "
        . "$opt{rounds} interleaved rounds, medians below\n";
    $text .= "$_->{name}: $_->{cmdline}\n" for @servers;
    $text .= "\n";
    $text .= sprintf "%-8s %12s %10s %14s %10s\n",
        'server', 'req/s', 'p99 ms', 'CPU us/req', 'RSS kB';
    for my $s (@servers) {
        my @runs = @{ $s->{runs} };
        $s->{med_rps} = median(map { $_->{rps} } @runs);
        my $cpu_us    = median(map { $_->{requests} ? $_->{cpu_ticks} / $hz * 1e6 / $_->{requests} : 0 } @runs);
        my $rss_total = 0;
        $rss_total += $_->[1] for @{ $s->{rss} };
        $text .= sprintf "%-8s %12.0f %10.2f %14.1f %10d\n",
            $s->{name}, $s->{med_rps}, median(map { $_->{p99_ms} } @runs), $cpu_us, $rss_total;
    }
    if (@servers == 2 && $servers[1]{med_rps} > 0) {
        $text .= sprintf "\nratio pagi/starman (req/s): %.2f\n",
            $servers[0]{med_rps} / $servers[1]{med_rps};
    }
    $text .= "\nRSS after the run (kB, per process):\n";
    for my $s (@servers) {
        $text .= "  $s->{name}: " . join(', ', map {"pid $_->[0] $_->[1]"} @{ $s->{rss} }) . "\n";
    }
    $text .= "CPU us/req: server process tree CPU time during the round / requests wrk completed.\n";
    return $text;
}
