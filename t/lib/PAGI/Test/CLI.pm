package PAGI::Test::CLI;
# Runs bin/pagi-server as a child process for tests: on a free 127.0.0.1
# port, with stdout and stderr captured in files, stdin from /dev/null, and
# every child killed and reaped at the latest when the test file ends.
use strict;
use warnings;

use parent 'Exporter';
use Cwd ();
use File::Basename ();
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time sleep);
use PAGI::Test::Server qw(parse_responses);

our @EXPORT_OK = qw(ROOT free_port start_cli stop_cli run_cli http_raw http_get_cli slurp wait_until);

# The distribution root: this file is t/lib/PAGI/Test/CLI.pm.
my $ROOT = Cwd::abs_path(File::Spec->catdir(File::Basename::dirname(__FILE__), ('..') x 4));
sub ROOT { $ROOT }

my $OWNER = $$;
my %LIVE;    # pid => 1 for children not reaped yet
END {
    if ($$ == $OWNER) {
        # A prefork master's workers outlive a KILLed master: they go too.
        for my $pid (keys %LIVE) { kill 'KILL', $pid, _children($pid); waitpid $pid, 0 }
    }
}

# The pids whose parent is $ppid (from /proc; none elsewhere).
sub _children {
    my ($ppid) = @_;
    opendir my $dh, '/proc' or return ();
    my @kids;
    for my $pid (grep { /\A\d+\z/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh> // next;
        my ($parent) = substr($stat, rindex($stat, ')') + 2) =~ /\A\S (\d+)/ or next;
        push @kids, $pid if $parent == $ppid;
    }
    return @kids;
}

# A port that was free a moment ago (another process may take it: callers retry).
sub free_port {
    my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1)
        or die "bind: $@";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return scalar <$fh>;
}

# Polls $cond every 50 ms for up to $timeout seconds; true if it held.
sub wait_until {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    until ($cond->()) {
        return 0 if time > $deadline;
        sleep 0.05;
    }
    return 1;
}

# Forks and execs pagi-server with @args from the distribution root (or
# from $dir: start_cli's `dir` option).
# %env overrides the environment (undef deletes); PAGI_ENV is unset unless given.
sub _spawn {
    my ($args, $env, $dir) = @_;
    my $out = File::Temp->new;
    my $err = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my %set = (PAGI_ENV => undef, %{ $env // {} });
        for my $k (keys %set) {
            if (defined $set{$k}) { $ENV{$k} = $set{$k} } else { delete $ENV{$k} }
        }
        chdir($dir // $ROOT) or POSIX::_exit(126);
        open STDIN, '<', File::Spec->devnull or POSIX::_exit(126);
        open STDOUT, '>', $out->filename or POSIX::_exit(126);
        open STDERR, '>', $err->filename or POSIX::_exit(126);
        { exec $^X, "-I$ROOT/lib", "-I$ROOT/blib/lib", "-I$ROOT/blib/arch", "$ROOT/bin/pagi-server", @$args }
        POSIX::_exit(127);
    }
    $LIVE{$pid} = 1;
    return { pid => $pid, out_file => $out, err_file => $err, args => $args };
}

# Non-blocking check: true once the child is gone; its wait status is in {status}.
sub _exited {
    my ($child) = @_;
    return 1 if defined $child->{status};
    my $r = waitpid $child->{pid}, POSIX::WNOHANG();
    return 0 unless $r == $child->{pid};
    $child->{status} = $?;
    delete $LIVE{ $child->{pid} };
    return 1;
}

sub _port_open {
    my ($port) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 1);
    return $s ? 1 : 0;
}

# start_cli(\@args, %opt) → child hashref {pid, port, out_file, err_file, ready}.
# Appends `--host 127.0.0.1 --port N` unless `no_port`; waits up to
# `timeout` (10) s for the port to accept. If the server exits before that
# because the chosen port got taken meanwhile, retries once on another port.
# `dir` runs it in that directory instead of the distribution root.
sub start_cli {
    my ($args, %opt) = @_;
    for my $attempt (1, 2) {
        my $port = $opt{port} // free_port();
        my @argv = (@$args, ($opt{no_port} ? () : ('--host', '127.0.0.1', '--port', $port)));
        my $child = _spawn(\@argv, $opt{env}, $opt{dir});
        $child->{port} = $port;
        $child->{ready} = wait_until(sub { _exited($child) || _port_open($port) }, $opt{timeout} // 10)
            && !defined $child->{status};
        return $child if $child->{ready};
        stop_cli($child);
        my $err = stderr_of($child);
        next if $attempt == 1 && !$opt{port} && $err =~ /Cannot listen/;
        $child->{ready} = 0;
        return $child;
    }
}

sub stderr_of { slurp($_[0]{err_file}->filename) }
sub stdout_of { slurp($_[0]{out_file}->filename) }

# Sends TERM and waits up to $timeout (10) s, then KILLs. Returns the wait
# status ($?-style); {killed} is set when TERM was not enough.
sub stop_cli {
    my ($child, $timeout) = @_;
    return $child->{status} if _exited($child);
    kill 'TERM', $child->{pid};
    unless (wait_until(sub { _exited($child) }, $timeout // 10)) {
        $child->{killed} = 1;
        kill 'KILL', $child->{pid};
        waitpid $child->{pid}, 0;
        $child->{status} = $?;
        delete $LIVE{ $child->{pid} };
    }
    $child->{stderr} = stderr_of($child);
    $child->{stdout} = stdout_of($child);
    return $child->{status};
}

# run_cli(\@args, %opt) → {exit, signal, stdout, stderr} for commands that
# end on their own (bounded by `timeout`, default 10 s, then killed).
sub run_cli {
    my ($args, %opt) = @_;
    my $child = _spawn($args, $opt{env});
    my $ended = wait_until(sub { _exited($child) }, $opt{timeout} // 10);
    stop_cli($child, 1) unless $ended;
    return { exit => $child->{status} >> 8, signal => $child->{status} & 127, timed_out => !$ended,
             stdout => stdout_of($child), stderr => stderr_of($child) };
}

# http_raw($port, $bytes, $timeout) → everything read until EOF or timeout (5 s).
sub http_raw {
    my ($port, $bytes, $timeout) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or return '';
    $sock->autoflush(1);
    print {$sock} $bytes;
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($timeout // 5);
    my $buf = '';
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

# http_get_cli($port, $path) → the parsed response (see parse_responses) or undef.
sub http_get_cli {
    my ($port, $path) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n\r\n"));
    return $r && defined $r->{status} ? $r : undef;
}

push @EXPORT_OK, qw(stderr_of stdout_of);

1;
