package PAGI::Bench;
# Shared machinery for the scripts in bench/. Not installed: the scripts load
# it with FindBin, and it is listed in MANIFEST only so it ships with them.
use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use IO::Select;
use IO::Socket::IP;
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(sleep time);

our $VERSION = '0.01';

our @EXPORT_OK = qw(
    chdir_repo_root require_tools require_pagi_build in_path
    free_port start_server stop_all server_died trap_signals wait_ready http_get http_request
    run_wrk parse_wrk run_rounds
    process_tree tree_cpu_ticks thread_cpu_ticks tree_rss record_rss rss_total rss_section clock_ticks
    loadavg
    timestamp results_dir host_info save_results slurp median
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my %running;    # pid => server, for every server still to be stopped
my @logs;       # server output files, kept only when the run fails

# Whatever ends the script (exit, die, a trapped signal), its servers go too.
# Logs are the evidence of a failure, so they stay unless the exit was clean
# or an interrupt (130).
END {
    stop_all();
    unlink @logs if $? == 0 || $? == 130;
}

# --- Setup -------------------------------------------------------------------

# The server commands use paths relative to the repo root; this file sits at
# bench/lib/PAGI/Bench.pm, four levels below it.
sub chdir_repo_root {
    my $root = abs_path(__FILE__);
    $root = dirname($root) for 1 .. 4;
    chdir $root or die "chdir to repo root $root: $!\n";
    return $root;
}

sub in_path {
    my ($prog) = @_;
    return scalar grep { -x "$_/$prog" } split /:/, ($ENV{PATH} // '');
}

sub require_tools {
    my @missing = grep { !in_path($_) } @_;
    die "missing: @missing. Run ./setup.sh --bench first.\n" if @missing;
}

# lib => 1 also asks for blib/lib, for commands that run with -Mblib.
sub require_pagi_build {
    my (%arg) = @_;
    die "bin/pagi-server not found: run this from a PAGI-Server-Native checkout.\n"
        unless -f 'bin/pagi-server';
    die "blib/ not built: run perl Makefile.PL && make first.\n"
        unless -d 'blib/arch' && (!$arg{lib} || -d 'blib/lib');
}

# --- Server processes --------------------------------------------------------

# Port 0 lets the kernel pick; another process could take the port before the
# server binds it, which is acceptable on a bench machine.
sub free_port {
    my $sock = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1)
        or die "cannot bind a free port: $@\n";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

sub start_server {
    my ($s, %arg) = @_;
    my @cmd = map { s/%PORT%/$s->{port}/gr } @{ $s->{cmd} };
    $s->{cmdline} = join ' ', $arg{show} ? map { $arg{show}->($_) } @cmd : @cmd;
    push @logs, $s->{log};
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        # A group of its own, so one signal also reaches forked workers.
        setpgrp(0, 0);
        open STDIN,  '<', '/dev/null';
        open STDOUT, '>', $s->{log};
        open STDERR, '>&', \*STDOUT;
        # production: no dev-mode middleware in the pagi-server runner.
        %ENV = (%ENV, PAGI_ENV => 'production', %{ $arg{env} || {} });
        { exec { $cmd[0] } @cmd }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);    # the parent's END block must not run here
    }
    $s->{pid} = $pid;
    $running{$pid} = $s;
    print "started $s->{name} (pid $pid): $s->{cmdline}\n";
    return $pid;
}

sub stop_all {
    my (%arg) = @_;
    return unless %running;
    local $?;    # called from END: keep the script's exit status
    my @groups = keys %running;    # a server's pid is its process group id
    # TERM first for a clean shutdown (the access log flushes then).
    kill 'TERM', -$_, $_ for @groups;
    my $deadline = time + ($arg{grace} // 5);
    while (time < $deadline) {
        for my $pid (keys %running) {
            delete $running{$pid} if waitpid($pid, WNOHANG) != 0;
        }
        # Workers (Starman's) can outlive their master briefly.
        last unless %running || grep { kill 0, -$_ } @groups;
        sleep 0.05;
    }
    kill 'KILL', -$_, $_ for grep { kill 0, -$_ } @groups;
    waitpid($_, 0) for keys %running;
    %running = ();
}

sub server_died {
    my ($s) = @_;
    return 0 unless $s->{pid} && $running{ $s->{pid} }
        && waitpid($s->{pid}, WNOHANG) == $s->{pid};
    delete $running{ $s->{pid} };
    return 1;
}

# exit() rather than die so END runs and the status says "interrupted".
sub trap_signals {
    $SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { warn "\ninterrupted, stopping servers\n"; exit 130 };
}

# Polls $check->($port) until it returns true and returns that value.
# The default check is any HTTP answer to GET /.
sub wait_ready {
    my ($s, %arg) = @_;
    my $timeout = $arg{timeout} // 15;
    my $check   = $arg{check} // sub { my $r = http_get($_[0]); $r && $r->{status} ? $r : undef };
    my $deadline = time + $timeout;
    while (time < $deadline) {
        if (server_died($s)) {
            die "$s->{name} exited during startup (wait status $?, exit code ${\($? >> 8)}). "
                . "Its output, kept in $s->{log}:\n" . (slurp($s->{log}) // '');
        }
        my $ok = $check->($s->{port});
        return $ok if $ok;
        sleep 0.1;
    }
    die "$s->{name} did not answer on 127.0.0.1:$s->{port} within ${timeout}s; see $s->{log}\n";
}

# HTTP/1.1 GET with Connection: close, enough to probe a server; undef while
# nothing answers.
sub http_get {
    my ($port, $path) = @_;
    return http_request($port, path => $path);
}

# One request with Connection: close. method (GET), path (/), body, headers
# (array ref of [name, value]); max_body stops reading once that many body
# bytes arrived (for endless or huge responses), timeout (5 s) bounds it all.
# A chunked body is de-chunked as far as it arrived.
sub http_request {
    my ($port, %arg) = @_;
    my $method = $arg{method} // 'GET';
    my $path   = $arg{path} // '/';
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 1)
        or return;
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n";
    $req .= "$_->[0]: $_->[1]\r\n" for @{ $arg{headers} || [] };
    $req .= 'Content-Length: ' . length($arg{body}) . "\r\n" if defined $arg{body};
    $req .= "\r\n" . ($arg{body} // '');
    print {$sock} $req;
    my ($buf, $sel, $deadline) = ('', IO::Select->new($sock), time + ($arg{timeout} // 5));
    while (time < $deadline && $sel->can_read(0.5)) {
        sysread($sock, $buf, 65536, length $buf) or last;
        if (defined $arg{max_body} && (my $at = index $buf, "\r\n\r\n") >= 0) {
            last if length($buf) - $at - 4 >= $arg{max_body};
        }
    }
    close $sock;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    return unless defined $head && $head =~ m{^HTTP/1\.[01] (\d{3})};
    my $status = $1;
    my %hdr = map { /^([^:\s]+):\s*(.*)$/ ? (lc $1 => $2) : () } split /\r\n/, $head;
    $body //= '';
    if (($hdr{'transfer-encoding'} // '') =~ /chunked/i) {
        my $plain = '';
        while ($body =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $plain .= substr($body, 0, $n, '');
            $body =~ s/\A\r\n//;
        }
        $plain .= $body if length($body) && $body !~ /\A[0-9a-fA-F]/;    # a partial piece
        $body = $plain;
    }
    $body = substr($body, 0, $arg{max_body}) if defined $arg{max_body} && length $body > $arg{max_body};
    return { status => $status, headers => \%hdr, body => $body };
}

# --- Load --------------------------------------------------------------------

sub run_wrk {
    my ($s, $seconds, $connections, %arg) = @_;
    my $path = $s->{path} // '/';
    my @cmd = ('wrk', '-t1', "-c$connections", "-d${seconds}s", '--latency',
        ($arg{script} ? ('-s', $arg{script}) : ()),
        "http://127.0.0.1:$s->{port}$path");
    open my $pipe, '-|', @cmd or die "run wrk: $!\n";
    my $raw = do { local $/; <$pipe> } // '';
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
    # Socket errors or non-2xx answers make req/s meaningless: say so.
    warn "warning: $name: $1\n" while $raw =~ /^\s*((?:Socket errors|Non-2xx).*)$/mg;
    my %to_ms = (us => 0.001, ms => 1, s => 1000, m => 60_000, h => 3_600_000);
    return { rps => $rps, p99_ms => $p99 * $to_ms{$u}, requests => $requests // 0, raw => $raw };
}

# Each round runs every server once, interleaved so drift on a shared machine
# hits all alike; flip => 1 also reverses the order on even rounds.
sub run_rounds {
    my (%arg) = @_;
    my @servers = @{ $arg{servers} };
    for my $round (1 .. $arg{rounds}) {
        for my $s ($arg{flip} && $round % 2 == 0 ? reverse @servers : @servers) {
            my $cpu0 = $arg{cpu} ? tree_cpu_ticks($s->{pid}) : 0;
            my $res  = $arg{run}->($s);
            $res->{cpu_ticks} = tree_cpu_ticks($s->{pid}) - $cpu0 if $arg{cpu};
            $res->{round} = $round;
            push @{ $s->{runs} }, $res;
            $arg{report}->($s, $res) if $arg{report};
        }
    }
}

# --- /proc sampling ----------------------------------------------------------

# The pid and all its descendants, so forked workers count too.
sub process_tree {
    my ($root) = @_;
    my %kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $line = slurp($stat) // next;
        # The command name in (...) may hold spaces; ppid follows the state.
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
    my ($root) = @_;
    my $ticks = 0;
    for my $pid (process_tree($root)) {
        my $line = slurp("/proc/$pid/stat") // next;
        $line =~ s/^.*\) //s;
        my @f = split ' ', $line;
        $ticks += $f[11] + $f[12];    # utime + stime
    }
    return $ticks;
}

# [main thread, other threads] utime + stime of one process, from
# /proc/PID/task: the main thread's TID is the PID. pagi-server runs Perl on
# the main thread and its Rust engine on the others.
sub thread_cpu_ticks {
    my ($pid) = @_;
    my ($main, $other) = (0, 0);
    for my $stat (glob "/proc/$pid/task/[0-9]*/stat") {
        my $line = slurp($stat) // next;
        my ($tid) = $line =~ /^(\d+)/ or next;
        $line =~ s/^.*\) //s;
        my @f = split ' ', $line;
        if ($tid == $pid) { $main += $f[11] + $f[12] } else { $other += $f[11] + $f[12] }
    }
    return [ $main, $other ];
}

# The 1-, 5- and 15-minute load averages, as /proc/loadavg has them.
sub loadavg {
    my $line = slurp('/proc/loadavg') // return 'unknown';
    return join ' ', (split ' ', $line)[0 .. 2];
}

sub clock_ticks {
    return eval { POSIX::sysconf(POSIX::_SC_CLK_TCK()) } || 100;
}

# [pid, kB] for each process in the tree.
sub tree_rss {
    my ($root) = @_;
    my @parts;
    for my $pid (process_tree($root)) {
        my $status = slurp("/proc/$pid/status") // next;
        push @parts, [ $pid, $1 ] if $status =~ /^VmRSS:\s+(\d+)\s+kB/m;
    }
    return \@parts;
}

sub record_rss {
    $_->{rss} = tree_rss($_->{pid}) for @_;
}

sub rss_total {
    my ($s) = @_;
    my $total = 0;
    $total += $_->[1] for @{ $s->{rss} };
    return $total;
}

sub rss_section {
    my $text = "\nRSS after the run (kB, per process):\n";
    for my $s (@_) {
        $text .= "  $s->{name}: " . join(', ', map {"pid $_->[0] $_->[1]"} @{ $s->{rss} }) . "\n";
    }
    return $text;
}

# --- Results -----------------------------------------------------------------

sub timestamp { return strftime('%Y%m%dT%H%M%SZ', gmtime) }

sub results_dir {
    my $dir = 'bench/results';
    make_path($dir);
    return $dir;
}

# The lines every summary starts its context with.
sub host_info {
    chomp(my $commit = `git rev-parse --short HEAD 2>/dev/null` // '');
    my ($perl_v) = grep { /\S/ } `$^X -v`;
    chomp $perl_v;
    chomp(my $nproc = `nproc 2>/dev/null` || 'unknown');
    return 'commit: ' . ($commit || 'none') . "\nnproc: $nproc\nperl: $perl_v\n";
}

# The summary, then every run's raw output; raw_end is appended to each.
sub save_results {
    my ($file, $summary, $servers, %arg) = @_;
    my $end = $arg{raw_end} // '';
    open my $fh, '>', $file or die "write $file: $!\n";
    print {$fh} $summary;
    for my $s (@$servers) {
        print {$fh} "\n===== $s->{name} round $_->{round} =====\n$_->{raw}$end" for @{ $s->{runs} };
    }
    close $fh or die "write $file: $!\n";
    print "saved $file\n";
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

1;

__END__

=head1 NAME

PAGI::Bench - shared harness for the load scripts in bench/

=head1 SYNOPSIS

    use FindBin;
    use lib "$FindBin::Bin/lib";
    use PAGI::Bench qw(:all);

    chdir_repo_root();
    trap_signals();
    my $s = { name => 'pagi', cmd => [ ..., '--port', '%PORT%' ] };
    $s->{port} = free_port();
    $s->{log}  = results_dir() . '/' . timestamp() . "-$s->{name}.log.tmp";
    start_server($s);
    wait_ready($s);
    run_rounds(rounds => 3, servers => [$s], cpu => 1,
               run => sub { run_wrk($_[0], 5, 50) });

=head1 DESCRIPTION

Helpers for F<bench/run>, F<bench/compare-starman.pl>, F<bench/compare-simple.pl>, F<bench/access-log.pl>,
F<bench/ws-echo.pl> and F<bench/sse-fanout.pl>. Nothing is exported by
default; C<:all> exports everything below.

A server is a hash: C<name>, C<cmd> (array ref; C<%PORT%> is replaced with
C<port>), C<log> (file for its output) and optionally C<path> (what
C<run_wrk> requests) are set by the caller;
C<start_server> adds C<pid> and C<cmdline>, C<run_rounds> pushes results to
C<runs>, C<record_rss> sets C<rss>.

Loading the module installs an C<END> block that stops every server still
running and removes their log files unless the script failed (exit status
other than 0 or 130).

=head1 FUNCTIONS

=head2 Setup

=over

=item chdir_repo_root()

Changes to the checkout root, found from this file's location.

=item in_path($prog), require_tools(@progs)

Whether C<$prog> is on C<PATH>; die naming every missing program.

=item require_pagi_build(lib => $bool)

Dies unless F<bin/pagi-server> and F<blib/arch> (and, with C<lib>,
F<blib/lib>) exist.

=back

=head2 Servers

=over

=item free_port()

A port on 127.0.0.1 that was free a moment ago.

=item start_server($s, env => \%env, show => \&map)

Forks C<< $s->{cmd} >> in its own process group with output to C<< $s->{log} >>,
C<PAGI_ENV=production> plus C<%env> in its environment. C<show> maps each
argument for the printed command line (to hide temp paths).

=item wait_ready($s, timeout => 15, check => \&check)

Calls C<< check->($port) >> every 0.1 s until it returns true, and returns
that value; dies if the server exits or the time runs out. The default check
is C<http_get> answering with any status.

=item http_get($port, $path)

A GET on 127.0.0.1; returns C<{ status, headers, body }> (header names lower
case) or nothing.

=item http_request($port, method => 'GET', path => '/', body => $bytes, headers => [[n, v]], max_body => $n, timeout => 5)

One request with C<Connection: close>, as C<http_get> answers. C<max_body>
stops reading after that many body bytes (for streams and huge bodies); a
chunked body is de-chunked.

=item server_died($s)

True once the server has exited (reaps it).

=item stop_all(grace => 5)

TERM to every server's group, then KILL after C<grace> seconds.

=item trap_signals()

INT, TERM and HUP exit with status 130 so the C<END> cleanup runs.

=back

=head2 Load and figures

=over

=item run_wrk($s, $seconds, $connections, script => $lua), parse_wrk($raw, $name)

Runs C<wrk -t1 --latency> (with C<-s $lua> when given) against C<< $s->{port} >> and C<< $s->{path} >>
(default C</>); returns
C<{ rps, p99_ms, requests, raw }>, warning about socket errors and non-2xx.

=item run_rounds(rounds => $n, servers => \@s, run => \&run, report => \&report, flip => $bool, cpu => $bool)

For each round, calls C<< run->($s) >> for each server, stores the round
number (and with C<cpu>, the server tree's CPU ticks as C<cpu_ticks>) in the
result, pushes it to C<< $s->{runs} >> and calls C<< report->($s, $res) >>.
C<flip> reverses the order on even rounds.

=item process_tree($pid), tree_cpu_ticks($pid), clock_ticks()

The pid and its descendants from F</proc>; their utime + stime in clock
ticks; ticks per second.

=item thread_cpu_ticks($pid)

C<[main, other]>: CPU ticks of the process's main thread (TID = PID) and of
all its other threads, from F</proc/PID/task>.

=item loadavg()

The three load averages from F</proc/loadavg>, as one string.

=item tree_rss($pid), record_rss(@s), rss_total($s), rss_section(@s)

C<[pid, kB]> per process; stored as C<< $s->{rss} >>; summed; the
"RSS after the run" text block of a summary.

=item median(@values)

=back

=head2 Results

=over

=item timestamp(), results_dir()

UTC C<YYYYMMDDTHHMMSSZ>; F<bench/results>, created if needed.

=item host_info()

The C<commit:>, C<nproc:> and C<perl:> lines.

=item save_results($file, $summary, \@servers, raw_end => $str)

Writes the summary then each run's C<raw> under a C<===== name round N =====>
heading, and prints C<saved $file>.

=item slurp($path)

=back

=cut
