package PAGI::Test::Chromium;
# Headless Chromium for the browser tests, driven over the DevTools protocol
# on --remote-debugging-pipe (NUL-separated JSON on the browser's fds 3 and
# 4). need_chromium() ends the test file when there is no browser (a skip,
# or a failure under CI=true, where ./setup.sh installs it); CHROMIUM=path
# picks another binary. Every browser started is stopped at the latest when
# the test file ends.
use strict;
use warnings;

use parent 'Exporter';
use Fcntl ();
use File::Temp ();
use IO::Select;
use JSON::PP ();
use POSIX ();
use Test::More ();
use Time::HiRes qw(time sleep);
use PAGI::Test::CLI ();

our @EXPORT_OK = qw(need_chromium start_browser stop_browser cdp browser_log);

my $CHROMIUM;
my @STARTED;
my $OWNER = $$;
END {
    if ($$ == $OWNER) {
        local $?;
        stop_browser($_) for @STARTED;
    }
}

sub find_chromium {
    return $ENV{CHROMIUM} if $ENV{CHROMIUM};
    for my $name (qw(chromium chromium-browser)) {
        for my $dir (split /:/, $ENV{PATH} // '') {
            return "$dir/$name" if -x "$dir/$name";
        }
    }
    return -x '/usr/bin/chromium' ? '/usr/bin/chromium' : undef;
}

# The browser binary, or the end of the test file (see the module comment).
sub need_chromium {
    return $CHROMIUM if $CHROMIUM;
    my $found = find_chromium();
    return $CHROMIUM = $found if $found && -x $found;
    my $why = 'Chromium not found (install Debian\'s chromium, or set CHROMIUM=/path/to/chromium)';
    if (($ENV{CI} // '') eq 'true') {
        Test::More::fail("CI=true and $why: ./setup.sh installs it under CI");
        Test::More::done_testing();
        exit;
    }
    Test::More::plan(skip_all => $why);
}

# start_browser($url) → { pid, to, from, log, profile, ... }: Chromium showing
# $url, in its own process group.
sub start_browser {
    my ($target) = @_;
    my $profile = File::Temp->newdir('pagi-chromium-XXXXXX', TMPDIR => 1);
    my $log     = File::Temp->new;
    pipe(my $cmd_r, my $cmd_w)   or die "pipe: $!";    # test → browser (its fd 3)
    pipe(my $res_r, my $res_w)   or die "pipe: $!";    # browser → test (its fd 4)
    my @argv = (
        $CHROMIUM // need_chromium(),
        '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--user-data-dir=' . $profile->dirname,
        '--remote-debugging-pipe',
        $target,
    );
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        setpgrp(0, 0);    # its own group: Chromium's helpers go down with it
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $log->filename;
        open STDERR, '>&', \*STDOUT;
        # fds 3 and 4, inherited across exec (dup2 clears close-on-exec).
        my ($r, $w) = (fileno $cmd_r, fileno $res_w);
        $r = POSIX::dup($r) if $r == 4;    # keep dup2(…, 4) from clobbering it
        POSIX::dup2($r, 3) // POSIX::_exit(126) unless $r == 3;
        POSIX::dup2($w, 4) // POSIX::_exit(126) unless $w == 4;
        for my $fd (3, 4) {
            my $flags = POSIX::fcntl($fd, Fcntl::F_GETFD(), 0);
            POSIX::fcntl($fd, Fcntl::F_SETFD(), $flags & ~Fcntl::FD_CLOEXEC());
        }
        { exec { $argv[0] } @argv }
        POSIX::_exit(127);
    }
    close $cmd_r;
    close $res_w;
    $cmd_w->autoflush(1);
    my $b = { pid => $pid, to => $cmd_w, from => $res_r, buf => '', next_id => 0,
              log => $log, profile => $profile, argv => \@argv };
    push @STARTED, $b;
    return $b;
}

sub stop_browser {
    my ($b) = @_;
    return if $b->{stopped}++;
    close $b->{to};
    close $b->{from};
    # TERM the group, give it 5 s, then KILL whatever is left of it.
    kill 'TERM', -$b->{pid};
    my $deadline = time + 5;
    my $reaped   = 0;
    while (time < $deadline) {
        $reaped ||= waitpid($b->{pid}, POSIX::WNOHANG()) != 0;
        last if $reaped && !kill 0, -$b->{pid};
        sleep 0.05;
    }
    kill 'KILL', -$b->{pid} if kill 0, -$b->{pid};
    waitpid $b->{pid}, 0 unless $reaped;
}

# cdp($browser, $method, \%params, $session) → the result hashref; dies on a
# protocol error or when no answer comes within $timeout (5) seconds.
sub cdp {
    my ($b, $method, $params, $session, $timeout) = @_;
    my $id = ++$b->{next_id};
    my %msg = (id => $id, method => $method, params => $params // {});
    $msg{sessionId} = $session if defined $session;
    my $bytes = JSON::PP->new->utf8->canonical->encode(\%msg) . "\0";
    defined syswrite($b->{to}, $bytes) or die "write to Chromium: $!\n";
    my $sel      = IO::Select->new($b->{from});
    my $deadline = time + ($timeout // 5);
    while (1) {
        while ($b->{buf} =~ s/\A([^\0]*)\0//) {
            my $reply = JSON::PP->new->utf8->decode($1);
            next unless defined $reply->{id} && $reply->{id} == $id;    # events, other replies
            die "$method: $reply->{error}{message}\n" if $reply->{error};
            return $reply->{result};
        }
        my $left = $deadline - time;
        die "$method: no answer from Chromium within ${\($timeout // 5)} s\n" if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread $b->{from}, $b->{buf}, 65536, length $b->{buf};
        die "$method: Chromium closed the DevTools pipe\n" unless $n;
    }
}

sub browser_log { $_[0] ? PAGI::Test::CLI::slurp($_[0]{log}->filename) : '' }

1;
