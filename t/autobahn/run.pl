#!/usr/bin/env perl
# Runs the Autobahn|Testsuite fuzzing client (wstest 0.8.2) against
# examples/04-websocket-echo served by bin/pagi-server with default options.
#
#   perl t/autobahn/run.pl [--write-summary] [--reports DIR] [--timeout S] [--verbose]
#
# From the repo root or anywhere: paths are relative to the distribution.
# Uses the engine built in blib/. wstest comes from $AUTOBAHN_WSTEST, else
# $HOME/.cache/pagi-server-native/autobahn-venv/bin/wstest (./setup.sh
# --websocket-clients makes that venv).
#
# The committed t/autobahn/fuzzingclient.json is copied to a temp dir with the
# server's real port and a temp report dir (or --reports DIR, kept). Prints
# the counts per result; --write-summary also writes t/autobahn/summary.json.
#
# Exit status: 0 when every case ran and none FAILED (neither behavior nor
# behaviorClose; WRONG CODE, UNCLEAN and FAILED BY CLIENT count as failures
# too); 1 when a case failed, a case is missing from the report, wstest timed
# out or the server died; 2 on a usage or set-up error; 3 when wstest is not
# installed.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use File::Temp qw(tempdir);
use Getopt::Long qw(GetOptions);
use IO::Socket::IP;
use JSON::PP ();
use POSIX qw(WNOHANG strftime);
use Time::HiRes qw(sleep time);

$| = 1;
my $ROOT    = abs_path(File::Spec->catdir(dirname(abs_path(__FILE__)), '..', '..'));
my $CONFIG  = "$ROOT/t/autobahn/fuzzingclient.json";
my $SUMMARY = "$ROOT/t/autobahn/summary.json";
my $APP     = 'examples/04-websocket-echo/app.pl';

my %opt = (timeout => 600);
GetOptions(\%opt, 'write-summary', 'reports=s', 'timeout=i', 'verbose', 'help') or usage(2);
usage(0) if $opt{help};
usage(2) if $opt{timeout} < 1 || @ARGV;

sub usage {
    print STDERR <<"USAGE";
usage: perl t/autobahn/run.pl [--write-summary] [--reports DIR] [--timeout S] [--verbose]
  --write-summary  write t/autobahn/summary.json (committed with the code)
  --reports DIR    keep wstest's HTML/JSON reports in DIR (default: a temp dir)
  --timeout S      bound for the whole wstest run (default 600)
  --verbose        show wstest's output as it runs
wstest: \$AUTOBAHN_WSTEST, else \$HOME/.cache/pagi-server-native/autobahn-venv/bin/wstest
USAGE
    exit $_[0];
}

sub say_ { print "autobahn: @_\n" }
sub fail_setup { print STDERR "autobahn: @_\n"; exit 2 }

my $wstest = $ENV{AUTOBAHN_WSTEST}
    || File::Spec->catfile($ENV{HOME} // '', qw(.cache pagi-server-native autobahn-venv bin wstest));
unless (-f $wstest && -x _) {
    print STDERR "autobahn: wstest not found at $wstest; run ./setup.sh --websocket-clients "
        . "(needs Python 2.7) or set AUTOBAHN_WSTEST\n";
    exit 3;
}
fail_setup("blib/ not built in $ROOT: run perl Makefile.PL && make first")
    unless -d "$ROOT/blib/arch" && -d "$ROOT/blib/lib";

my $json = JSON::PP->new->utf8->canonical->pretty;
my $spec = eval { $json->decode(slurp($CONFIG) // die "cannot read $CONFIG: $!\n") }
    or fail_setup("$CONFIG: $@");

my $tmp = tempdir('pagi-autobahn-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my %child;    # name => pid, each the leader of its own process group
END { stop_children() }
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { print STDERR "autobahn: interrupted\n"; exit 130 };

# --- The server ---------------------------------------------------------------
my $server_log = "$tmp/server.log";
my $port;
for my $attempt (1, 2) {
    $port = free_port();
    $child{server} = spawn([ $^X, "-I$ROOT/blib/lib", "-I$ROOT/blib/arch", "-I$ROOT/lib",
        "$ROOT/bin/pagi-server", $APP, '--host', '127.0.0.1', '--port', $port ], $server_log);
    my $deadline = time + 15;
    my $up = 0;
    until ($up = port_open($port)) {
        last if exited('server') || time > $deadline;
        sleep 0.05;
    }
    last if $up;
    stop_children();
    next if $attempt == 1 && (slurp($server_log) // '') =~ /Cannot listen/;
    print STDERR "autobahn: pagi-server did not start on port $port; its output:\n", slurp($server_log) // '';
    exit 1;
}
say_("pagi-server $APP on 127.0.0.1:$port (pid $child{server})");

# --- The fuzzing client ---------------------------------------------------------
my $outdir = $opt{reports} ? File::Spec->rel2abs($opt{reports}) : "$tmp/reports";
make_path($outdir);
$spec->{outdir} = $outdir;
$_->{url} =~ s{\A(wss?://[^/:]+):\d+}{$1:$port} for @{ $spec->{servers} };
my $run_config = "$tmp/fuzzingclient.json";
spew($run_config, $json->encode($spec));
my $agent = $spec->{servers}[0]{agent};

my $wstest_log = "$tmp/wstest.log";
say_("$wstest -m fuzzingclient, cases @{ $spec->{cases} }, excluding "
    . (@{ $spec->{'exclude-cases'} || [] } ? "@{ $spec->{'exclude-cases'} }" : 'none'));
my $t0 = time;
$child{wstest} = spawn([ $wstest, '-m', 'fuzzingclient', '-s', $run_config ], $wstest_log, $tmp);
my ($timed_out, $wstest_status) = (0);
my $shown = 0;
while (1) {
    if (exited('wstest')) { $wstest_status = $child{wstest_status}; last }
    if (time - $t0 > $opt{timeout}) { $timed_out = 1; last }
    $shown = show_new($wstest_log, $shown) if $opt{verbose};
    sleep 0.2;
}
show_new($wstest_log, $shown) if $opt{verbose};
my $elapsed = time - $t0;
my $server_died = exited('server');
stop_children();

my @problems;
push @problems, sprintf('wstest did not finish within %d s (--timeout)', $opt{timeout}) if $timed_out;
push @problems, "wstest exited with status $wstest_status" if defined $wstest_status && $wstest_status != 0;
push @problems, 'pagi-server exited during the run' if $server_died;

# The case ids wstest resolved from the patterns: it prints them as a Python list.
my $log = slurp($wstest_log) // '';
my @expected = $log =~ /^Cases = \[(.*)\]$/m ? ($1 =~ /'([\d.]+)'/g) : ();
my ($suite_version) = $log =~ /Autobahn Testsuite Version ([\d.]+)/;
push @problems, 'wstest did not list the cases it would run' unless @expected;

my $index = -f "$outdir/index.json" ? eval { $json->decode(slurp("$outdir/index.json")) } : undef;
my $results = $index && $index->{$agent} || {};
push @problems, "no report for agent '$agent' in $outdir/index.json" unless %$results;
my @missing = grep { !$results->{$_} } @expected;
push @problems, sprintf('%d of %d cases missing from the report (%s%s)', scalar @missing, scalar @expected,
    join(' ', @missing[0 .. ($#missing < 9 ? $#missing : 9)]), @missing > 10 ? ' ...' : '') if @missing;

# --- Counts ------------------------------------------------------------------------
my @KNOWN = ('OK', 'NON-STRICT', 'INFORMATIONAL', 'FAILED', 'UNIMPLEMENTED');
my %PASSING = map { $_ => 1 } 'OK', 'NON-STRICT', 'INFORMATIONAL', 'UNIMPLEMENTED';
my %count = map { my $k = $_; ($k => { map { $_ => 0 } @KNOWN }) } qw(behavior behaviorClose);
my (@non_ok, @failed);
for my $id (sort by_case keys %$results) {
    my $r = $results->{$id};
    $count{$_}{ $r->{$_} // 'MISSING' }++ for qw(behavior behaviorClose);
    next if ($r->{behavior} // '') eq 'OK' && ($r->{behaviorClose} // '') eq 'OK';
    push @non_ok, { case => $id, behavior => $r->{behavior}, behaviorClose => $r->{behaviorClose},
                    remoteCloseCode => $r->{remoteCloseCode} };
    push @failed, $id if grep { !$PASSING{ $_ // '' } } $r->{behavior}, $r->{behaviorClose};
}
push @problems, sprintf('%d case(s) FAILED: %s', scalar @failed, join ' ', @failed) if @failed;

sub fmt_counts {
    my ($c) = @_;
    return join ', ', map { "$_ $c->{$_}" } @KNOWN, sort grep { my $k = $_; !grep { $_ eq $k } @KNOWN } keys %$c;
}
printf "autobahn: %d cases in %.0f s against %s\n", scalar(keys %$results), $elapsed, $agent;
print  "autobahn: behavior:      ", fmt_counts($count{behavior}), "\n";
print  "autobahn: behaviorClose: ", fmt_counts($count{behaviorClose}), "\n";
print  "autobahn: not OK: ", join(', ', map { "$_->{case} $_->{behavior}/$_->{behaviorClose}" } @non_ok), "\n"
    if @non_ok;

if ($opt{'write-summary'}) {
    my $summary = {
        agent               => $agent,
        autobahntestsuite   => $suite_version,
        server              => "bin/pagi-server $APP (default options)",
        config              => 't/autobahn/fuzzingclient.json',
        cases               => $spec->{cases},
        'exclude-cases'     => $spec->{'exclude-cases'} || [],
        total_cases         => scalar(keys %$results),
        expected_cases      => scalar(@expected),
        behavior            => $count{behavior},
        behaviorClose       => $count{behaviorClose},
        non_ok              => \@non_ok,
        passed              => @problems ? JSON::PP::false : JSON::PP::true,
        duration_seconds    => 0 + sprintf('%.0f', $elapsed),
        date                => strftime('%Y-%m-%dT%H:%M:%SZ', gmtime),
    };
    spew($SUMMARY, $json->encode($summary));
    say_("wrote $SUMMARY");
}
say_("reports kept in $outdir") if $opt{reports};

if (@problems) {
    print STDERR "autobahn: FAIL: $_\n" for @problems;
    my @tail = (split /\n/, $log)[-20 .. -1];
    print STDERR "autobahn: last lines of wstest's output:\n", map { "  $_\n" } grep { defined } @tail;
    my $slog = slurp($server_log) // '';
    print STDERR "autobahn: pagi-server's output:\n$slog" if length $slog;
    exit 1;
}
say_('PASS: every case ran, none FAILED');
exit 0;

# ---------------------------------------------------------------------------

sub by_case {
    my @x = split /\./, $a;
    my @y = split /\./, $b;
    while (@x || @y) {
        my $c = (shift(@x) // -1) <=> (shift(@y) // -1);
        return $c if $c;
    }
    return 0;
}

sub free_port {
    my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1)
        or fail_setup("cannot bind a free port: $@");
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub port_open {
    my ($p) = @_;
    return IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $p, Timeout => 1) ? 1 : 0;
}

# Forks and execs @$cmd in its own process group, output to $logfile.
sub spawn {
    my ($cmd, $logfile, $dir) = @_;
    my $pid = fork // fail_setup("fork: $!");
    if (!$pid) {
        setpgrp(0, 0);
        chdir($dir // $ROOT) or POSIX::_exit(126);
        delete $ENV{PAGI_ENV};
        open STDIN, '<', File::Spec->devnull or POSIX::_exit(126);
        open STDOUT, '>', $logfile or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        { exec { $cmd->[0] } @$cmd }
        print STDERR "exec $cmd->[0]: $!\n";
        POSIX::_exit(127);    # never run the parent's END block here
    }
    return $pid;
}

# True once the named child is gone (reaped); its exit code is kept.
sub exited {
    my ($name) = @_;
    my $pid = $child{$name} or return 1;
    return 0 unless waitpid($pid, WNOHANG) == $pid;
    $child{"${name}_status"} = $? >> 8;
    delete $child{$name};
    return 1;
}

# TERM to each child's group, then KILL after 10 s.
sub stop_children {
    local $?;
    my @names = grep { /\A(server|wstest)\z/ && $child{$_} } keys %child;
    return unless @names;
    kill 'TERM', -$child{$_} for @names;
    my $deadline = time + 10;
    while (time < $deadline && grep { !exited($_) } @names) { sleep 0.05 }
    for my $name (grep { $child{$_} } @names) {
        kill 'KILL', -$child{$name};
        waitpid $child{$name}, 0;
        delete $child{$name};
    }
}

sub show_new {
    my ($file, $from) = @_;
    my $text = slurp($file) // return $from;
    print substr($text, $from) if length $text > $from;
    return length $text;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return;
    local $/;
    return scalar <$fh>;
}

sub spew {
    my ($path, $text) = @_;
    open my $fh, '>', $path or fail_setup("write $path: $!");
    print {$fh} $text;
    close $fh or fail_setup("write $path: $!");
}
