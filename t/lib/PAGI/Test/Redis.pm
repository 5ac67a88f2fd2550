package PAGI::Test::Redis;
use strict;
use warnings;

=head1 NAME

PAGI::Test::Redis - a redis-server of the test's own, on a free loopback port

=head1 SYNOPSIS

    use PAGI::Test::Redis qw(need_redis);
    need_redis();                                  # skip, or fail under CI=true
    my $redis = PAGI::Test::Redis->start(password => 'pw');
    my $url   = $redis->url;                       # redis://:pw@127.0.0.1:PORT
    $redis->command(SET => 'k', 'v');              # 'OK'
    $redis->stop;                                  # TERM, then KILL; reaped
    $redis->restart;                               # again, on the same port
    # TLS only (needs IO::Socket::SSL, certificates from PAGI::Test::PKI):
    my $tls = PAGI::Test::Redis->start(tls => { cert => $c, key => $k, ca => $ca });

=head1 DESCRIPTION

Runs Debian's F</usr/bin/redis-server> (installed by F<setup.sh>) in the
foreground as a child of the test: bound to 127.0.0.1 on a port that was
free a moment ago (another attempt on another port if it was taken
meanwhile), without persistence (C<--save '' --appendonly no>, its files in
a temporary directory), optionally with C<--requirepass>, or TLS only
(C<--port 0 --tls-port PORT>). C<start> returns once the server answers
PING over a raw socket (bounded: 10 s), or dies with its log.

Every server still running is killed and reaped when the test file ends,
also when the file's alarm (from PAGI::Test::Server) fires: if nothing else
handles SIGALRM this module makes it die, so END blocks run instead of the
process vanishing with its children left behind.

=head1 FUNCTIONS AND METHODS

=over

=item need_redis()

Ends the test file unless F</usr/bin/redis-server> is there: C<skip_all>,
or under C<CI=true> (where F<setup.sh> installs it) a failure.

=item start(%opt)

C<password>, C<tls> (hashref of C<cert>, C<key>, C<ca> PEM files), C<args>
(more redis-server arguments).

=item port, url, log, pid, running

C<url> is the C<redis://> (or C<rediss://...?ca=>) URL a client uses,
password included; C<log> is what the server printed so far.

=item command(@words)

One command on a fresh connection (AUTH first with a password; plain TCP
only): the reply as a string (C<ERR ...> for errors), an integer for
integers, undef for nil or no answer within 5 s.

=item stop, restart

C<stop> sends TERM, waits up to 5 s, then KILL; always reaped. C<restart>
starts it again on the same port (retrying for a few seconds should the
port be briefly busy) and waits for PING.

=back

=cut

use parent 'Exporter';
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use PAGI::Test::CLI ();
use POSIX ();
use Test::More ();
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(need_redis redis_server_path);

my $BIN = '/usr/bin/redis-server';
sub redis_server_path { $BIN }

my $OWNER = $$;
my %LIVE;    # pid => server object, for END
END {
    if ($$ == $OWNER) {
        local $?;
        for my $self (values %LIVE) { $self->_kill }
    }
}
# The default action of SIGALRM ends the process without END blocks.
$SIG{ALRM} ||= sub { die "test file timed out (alarm)\n" };

sub need_redis {
    return if -x $BIN;
    my $why = "$BIN is not installed (./setup.sh installs Debian's redis-server)";
    if (($ENV{CI} // '') eq 'true') {
        Test::More::fail("CI=true and $why");
        Test::More::done_testing();
        exit;
    }
    Test::More::plan(skip_all => $why);
}

sub start {
    my ($class, %opt) = @_;
    my $dir = File::Temp->newdir('pagi-redis-XXXXXX', TMPDIR => 1);
    my $self = bless { %opt, dir => $dir, log_file => "$dir/redis.log" }, $class;
    for my $attempt (1 .. 3) {
        $self->{port} = PAGI::Test::CLI::free_port();
        return $self if $self->_launch;
        # Most likely the port was taken meanwhile: another one.
    }
    die "redis-server did not start:\n" . $self->log;
}

sub restart {
    my ($self) = @_;
    $self->stop;
    my $deadline = time + 10;
    until ($self->_launch) {
        die "redis-server did not restart on port $self->{port}:\n" . $self->log if time > $deadline;
        sleep 0.2;
    }
    return $self;
}

sub _launch {
    my ($self) = @_;
    my @args = ('--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', "$self->{dir}",
        '--daemonize', 'no', '--protected-mode', 'no');
    if (my $t = $self->{tls}) {
        push @args, '--port', 0, '--tls-port', $self->{port}, '--tls-cert-file', $t->{cert},
            '--tls-key-file', $t->{key}, '--tls-ca-cert-file', $t->{ca}, '--tls-auth-clients', 'no';
    }
    else {
        push @args, '--port', $self->{port};
    }
    push @args, '--requirepass', $self->{password} if defined $self->{password};
    push @args, @{ $self->{args} || [] };
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $self->{log_file};
        open STDERR, '>&', \*STDOUT;
        { exec $BIN, @args }
        POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    $LIVE{$pid} = $self;
    my $deadline = time + 10;
    while (time < $deadline) {
        return 1 if ($self->_ping // '') eq 'PONG';
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {    # it exited: port taken?
            delete $LIVE{$pid};
            undef $self->{pid};
            return 0;
        }
        sleep 0.05;
    }
    $self->_kill;
    return 0;
}

sub port    { $_[0]{port} }
sub pid     { $_[0]{pid} }
sub running { defined $_[0]{pid} }
sub log     { open my $fh, '<', $_[0]{log_file} or return ''; local $/; scalar <$fh> }

sub url {
    my ($self) = @_;
    my $auth = defined $self->{password} ? ":$self->{password}@" : '';
    return "rediss://${auth}127.0.0.1:$self->{port}?ca=$self->{tls}{ca}" if $self->{tls};
    return "redis://${auth}127.0.0.1:$self->{port}";
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (waitpid($pid, POSIX::WNOHANG()) != $pid) {
        if (time > $deadline) { kill 'KILL', $pid; waitpid $pid, 0; last }
        sleep 0.02;
    }
    delete $LIVE{$pid};
    undef $self->{pid};
}

sub _kill {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    kill 'KILL', $pid;
    waitpid $pid, 0;
    delete $LIVE{$pid};
    undef $self->{pid};
}

sub _connect {
    my ($self) = @_;
    if ($self->{tls}) {
        require IO::Socket::SSL;
        return IO::Socket::SSL->new(PeerHost => '127.0.0.1', PeerPort => $self->{port}, Timeout => 2,
            SSL_ca_file => $self->{tls}{ca}, SSL_verifycn_name => '127.0.0.1');
    }
    return IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $self->{port}, Timeout => 2);
}

sub _ping {
    my ($self) = @_;
    my $sock = $self->_connect or return undef;
    return $self->_exchange($sock, 'PING');
}

sub command {
    my ($self, @words) = @_;
    my $sock = $self->_connect or return undef;
    return $self->_exchange($sock, @words);
}

# Writes the command (after AUTH with a password) and reads its reply.
sub _exchange {
    my ($self, $sock, @words) = @_;
    my @cmds = ((defined $self->{password} ? [ 'AUTH', $self->{password} ] : ()), \@words);
    my $out = join '', map { '*' . @$_ . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @$_) } @cmds;
    syswrite($sock, $out) or return undef;
    my ($buf, $sel) = ('', IO::Select->new($sock));
    my $deadline = time + 5;
    my @replies;
    while (@replies < @cmds) {
        if (my $r = _parse(\$buf)) { push @replies, $r; next }
        # TLS sockets may hold decrypted bytes select cannot see.
        my $pending = $sock->can('pending') ? $sock->pending : 0;
        unless ($pending) {
            my $left = $deadline - time;
            return undef if $left <= 0 || !$sel->can_read($left);
        }
        sysread($sock, $buf, 65536, length $buf) or return undef;
    }
    return ${ $replies[-1] };
}

# A reference to the first complete reply in $$buf (taken off it), or undef.
# Arrays come back as array references.
sub _parse {
    my ($buf) = @_;
    my $pos = 0;
    my $r = _parse_at($buf, \$pos) or return undef;
    substr($$buf, 0, $pos, '');
    return $r;
}

sub _parse_at {
    my ($buf, $pos) = @_;
    my $eol = index($$buf, "\r\n", $$pos);
    return undef if $eol < 0;
    my $kind = substr($$buf, $$pos, 1);
    my $rest = substr($$buf, $$pos + 1, $eol - $$pos - 1);
    my $next = $eol + 2;
    if ($kind eq '+' || $kind eq ':') { $$pos = $next; return \"$rest" }
    if ($kind eq '-') { $$pos = $next; return \"ERR $rest" }
    if ($kind eq '$') {
        if ($rest < 0) { $$pos = $next; return \undef }
        return undef if length($$buf) < $next + $rest + 2;
        my $v = substr($$buf, $next, $rest);
        $$pos = $next + $rest + 2;
        return \$v;
    }
    if ($kind eq '*') {
        my $p = $next;
        my @items;
        for (1 .. $rest) {
            my $r = _parse_at($buf, \$p) or return undef;
            push @items, $$r;
        }
        $$pos = $p;
        return \\@items;
    }
    die "PAGI::Test::Redis: cannot parse a reply starting with '$kind'\n";
}

1;
