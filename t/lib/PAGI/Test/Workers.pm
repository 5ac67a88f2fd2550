package PAGI::Test::Workers;
# Helpers for tests of prefork masters and the processes around them: the
# live children of a pid (from /proc), liveness, one request per fresh
# connection, a looping client in a child process, and whether a port is
# free again. Linux only (/proc), like the workers themselves.
use strict;
use warnings;

use parent 'Exporter';
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time);
use PAGI::Test::Server qw(parse_responses);
use PAGI::Test::CLI qw(http_raw slurp wait_until);

our @EXPORT_OK = qw(children_of alive get concurrent_gets start_looper stop_looper
                    listening_sockets port_free wait_children);

# Live (non-zombie) children of $ppid.
sub children_of {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return ();
    for my $pid (grep { /\A\d+\z/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh> // next;
        my ($state, $parent) = substr($stat, rindex($stat, ')') + 2) =~ /\A(\S) (\d+)/ or next;
        push @kids, $pid if $parent == $ppid && $state ne 'Z';
    }
    return sort { $a <=> $b } @kids;
}

sub alive {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $stat = <$fh> // return 0;
    return substr($stat, rindex($stat, ')') + 2, 1) ne 'Z';
}

# Waits until $ppid has exactly $n live children, none of them in @gone.
sub wait_children {
    my ($ppid, $n, $timeout, @gone) = @_;
    my %gone = map { $_ => 1 } @gone;
    my @kids;
    my $ok = wait_until(sub {
        @kids = children_of($ppid);
        @kids == $n && !grep { $gone{$_} } @kids;
    }, $timeout // 20);
    return $ok ? @kids : ();
}

# One GET on a fresh connection → the parsed response or undef.
sub get {
    my ($port, $path, $timeout) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", $timeout // 10));
    return $r && defined $r->{status} ? $r : undef;
}

# $n requests in flight at once (so several workers take part) → bodies,
# 'failed' for each that got no 200.
sub concurrent_gets {
    my ($port, $n) = @_;
    my @socks = grep { $_ } map {
        IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10)
    } 1 .. $n;
    syswrite $_, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" for @socks;
    my %buf;
    my $sel = IO::Select->new(@socks);
    my $deadline = time + 20;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            my $got = sysread $s, $buf{ fileno $s }, 65536, length($buf{ fileno $s } // '');
            $sel->remove($s) unless $got;
        }
    }
    my @bodies = map { my ($r) = parse_responses($buf{ fileno $_ } // ''); $r && ($r->{status} // 0) == 200 ? $r->{body} : 'failed' } @socks;
    push @bodies, ('failed') x ($n - @socks);
    return @bodies;
}

# A child process sending GET / back to back, each on a new connection,
# until TERM; it counts successes, failures and the bodies (pids) that
# answered. No retry: every failure is counted.
my $OWNER = $$;
my %LOOPERS;
END {
    if ($$ == $OWNER) { for my $pid (keys %LOOPERS) { kill 'KILL', $pid; waitpid $pid, 0 } }
}

sub start_looper {
    my ($port, $dir) = @_;
    my $file = "$dir/looper.$$." . (keys(%LOOPERS) + 1) . '.' . int(rand 1e6);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $stop = 0;
        $SIG{TERM} = sub { $stop = 1 };
        my ($ok, $fail, %pids, @errors) = (0, 0);
        until ($stop) {
            my $t0 = time;
            my $r = get($port, '/');
            # The TERM that stops this loop interrupts the request in flight.
            last if $stop && !($r && $r->{status} == 200);
            if ($r && $r->{status} == 200) { $ok++; $pids{ $r->{body} }++ }
            else { $fail++; push @errors, ($r ? "status_$r->{status}" : 'no_response') . sprintf('@%.3f', $t0) }
        }
        open my $fh, '>', $file or POSIX::_exit(1);
        print {$fh} "ok=$ok fail=$fail pids=" . join(',', sort keys %pids)
            . ' errors=' . join(';', @errors[0 .. ($#errors < 4 ? $#errors : 4)]) . "\n";
        close $fh;
        POSIX::_exit(0);
    }
    $LOOPERS{$pid} = 1;
    return { pid => $pid, file => $file };
}

# Stops the looper → {ok, fail, pids => [...], errors}.
sub stop_looper {
    my ($looper) = @_;
    kill 'TERM', $looper->{pid};
    waitpid $looper->{pid}, 0;
    delete $LOOPERS{ $looper->{pid} };
    my $line = slurp($looper->{file});
    my %r = $line =~ /(\w+)=(\S*)/g;
    $r{pids} = [ split /,/, $r{pids} // '' ];
    $r{$_} //= 0 for qw(ok fail);
    $r{errors} //= '(the looper wrote no report)';
    return \%r;
}

# Sockets listening on 127.0.0.1:$port (or any address), from /proc/net/tcp.
sub listening_sockets {
    my ($port) = @_;
    my $hex = sprintf '%04X', $port;
    return scalar grep { my @f = split ' '; ($f[1] // '') =~ /:$hex\z/ && ($f[3] // '') eq '0A' }
        split /\n/, slurp('/proc/net/tcp');
}

# True when nothing listens on the port and a new socket can bind it.
sub port_free {
    my ($port) = @_;
    return 0 if listening_sockets($port);
    my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => $port, Listen => 1, ReuseAddr => 1);
    return $s ? 1 : 0;
}

1;
