#!/usr/bin/env perl
# SSE fan-out rate: events per second delivered to 50 EventSource clients by
# pagi-server (this dist) and by Mojolicious, same hub, same run.
# Usage (from the repo root, after `make`): perl bench/sse-fanout.pl [--duration S] [--rounds N]
# See bench/README.md.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use Getopt::Long qw(GetOptions);
use IO::Select;
use IO::Socket::IP;
use List::Util qw(min max sum0);
use POSIX qw(strftime WNOHANG);
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
chdir(dirname(dirname(abs_path(__FILE__)))) or die "chdir to repo root: $!\n";

my @servers;
push @servers, { name => 'pagi', cmd => \@PAGI_CMD } if $opt{only} ne 'mojo';
push @servers, { name => 'mojo', cmd => \@MOJO_CMD } if $opt{only} ne 'pagi';

check_tools();

my $stamp   = strftime('%Y%m%dT%H%M%SZ', gmtime);
my $out_dir = 'bench/results';
make_path($out_dir);

# Servers get their own process group, and cleanup runs on normal exit, die,
# and INT/TERM alike.
my %running;    # pid => server
END {
    stop_all();
    # Server logs matter only when something failed; an interrupt (130) is not a failure.
    unlink grep { defined } map { $_->{log} } @servers if $? == 0 || $? == 130;
}
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { warn "\ninterrupted, stopping servers\n"; exit 130 };
$SIG{PIPE} = 'IGNORE';
$| = 1;    # progress lines in order with errors, also when piped

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
    print "warm-up $s->{name} (${WARMUP}s, $opt{clients} clients)\n";
    session($s, $WARMUP);
}

# Interleaved, the order flipping every round, so drift on a shared machine
# hits both servers alike.
for my $round (1 .. $opt{rounds}) {
    my @order = $round % 2 ? @servers : reverse @servers;
    for my $s (@order) {
        my $res = session($s, $opt{duration});
        $res->{round} = $round;
        push @{ $s->{runs} }, $res;
        printf "round %d %-5s %10.0f events/s  server CPU %3.0f%%  client CPU %3.0f%%  per client %d..%d%s\n",
            $round, $s->{name}, $res->{eps}, $res->{server_cpu}, $res->{client_cpu},
            $res->{min_client}, $res->{max_client},
            $res->{id_mismatch} ? "  ID MISMATCH on $res->{id_mismatch} clients" : '';
    }
}

for my $s (@servers) {
    $s->{rss} = tree_rss($s->{pid});
}

my $summary = summary(@servers);
print "\n$summary";

my $file = "$out_dir/$stamp-sse-fanout.txt";
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
    if ($opt{only} ne 'pagi') {
        system($^X, '-MMojolicious', '-e1') == 0
            or die "Mojolicious is missing. Run ./setup.sh --bench first.\n";
    }
    return if $opt{only} eq 'mojo';
    die "bin/pagi-server not found: run this from a PAGI-Server-Native checkout.\n"
        unless -f 'bin/pagi-server';
    die "blib/ not built: run perl Makefile.PL && make first.\n"
        unless -d 'blib/arch';
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
        local $ENV{SSE_FANOUT_BATCH} = $opt{batch};
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
    kill 'TERM', -$_, $_ for @groups;
    my $deadline = time + 5;
    while (time < $deadline) {
        for my $pid (keys %running) {
            delete $running{$pid} if waitpid($pid, WNOHANG) != 0;
        }
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
    return { status => $1, body => $body // '' };
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

    my $hz    = eval { POSIX::sysconf(POSIX::_SC_CLK_TCK()) } || 100;
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

sub process_tree {
    my ($root) = @_;
    my %kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
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

sub one_line {
    my ($code) = @_;
    my $v = `$^X -e '$code' 2>/dev/null` // '';
    chomp $v;
    return $v || 'unknown';
}

sub summary {
    my @servers = @_;
    my $text    = '';
    my $commit  = `git rev-parse --short HEAD 2>/dev/null` // '';
    chomp $commit;
    my ($perl_v) = grep { /\S/ } `$^X -v`;
    chomp $perl_v;
    chomp(my $nproc = `nproc 2>/dev/null` || 'unknown');

    $text .= "pagi-server vs Mojolicious, SSE fan-out, $stamp\n";
    $text .= "commit: " . ($commit || 'none') . "\n";
    $text .= "nproc: $nproc\n";
    $text .= "perl: $perl_v\n";
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
        my $rss_total = sum0(map { $_->[1] } @{ $s->{rss} });
        $text .= sprintf "%-6s %12.0f %11.0f%% %11.0f%% %14.2f %10d\n",
            $s->{name}, $s->{med_eps}, median(map { $_->{server_cpu} } @runs),
            median(map { $_->{client_cpu} } @runs), $cpu_us, $rss_total;
    }
    if (@servers == 2 && $servers[1]{med_eps} > 0) {
        $text .= sprintf "\nratio pagi/mojo (events/s): %.2f\n",
            $servers[0]{med_eps} / $servers[1]{med_eps};
    }
    my @bad = map { my $s = $_; map { "$s->{name} round $_->{round}" } grep { $_->{id_mismatch} } @{ $s->{runs} } } @servers;
    $text .= @bad
        ? "\nWARNING: event counts and ids disagree (lost or repeated events) in: @bad\n"
        : "\nevery client's event count matched its id advance (no event lost or repeated)\n";
    $text .= "\nRSS after the run (kB, per process):\n";
    for my $s (@servers) {
        $text .= "  $s->{name}: " . join(', ', map {"pid $_->[0] $_->[1]"} @{ $s->{rss} }) . "\n";
    }
    $text .= "CPU %: of one core over the window (server process tree; client = this script).\n";
    $text .= "CPU us/event: server CPU time / events delivered (one event to one client).\n";
    return $text;
}
