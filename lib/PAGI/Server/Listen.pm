package PAGI::Server::Listen;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Fcntl qw(F_GETFD F_SETFD FD_CLOEXEC);
use IO::Handle ();
use IO::Socket::IP;
use IO::Socket::UNIX;
use Socket qw(AF_INET AF_INET6 AF_UNIX SOCK_STREAM SOL_SOCKET SO_ACCEPTCONN SO_TYPE
              sockaddr_family unpack_sockaddr_in unpack_sockaddr_in6 unpack_sockaddr_un
              inet_ntop inet_pton);

=head1 NAME

PAGI::Server::Listen - listening sockets of PAGI::Server: specs, binding, inherited fds

=head1 SYNOPSIS

    my @wanted    = PAGI::Server::Listen->requested($config);
    my $listeners = PAGI::Server::Listen->open_all(\@wanted, backlog => 2048);
    for my $l (@$listeners) {
        $engine->listen_fd($l->{handle});
        print "$l->{spec}{type}\n";          # tcp or unix
    }
    PAGI::Server::Listen->close_all($listeners);   # unlinks the Unix socket files it created

=head1 DESCRIPTION

Internal to L<PAGI::Server>. Perl owns the listening sockets (the engine
only accepts on the fds it is given), so everything about where a server
listens lives here:

=over 4

=item * turning the C<host>/C<port>, C<socket>/C<socket_mode>, C<listen>
and C<fd> options into a list of requested specs;

=item * binding TCP sockets (C<SO_REUSEADDR>, optionally C<SO_REUSEPORT>)
and Unix-domain sockets (a stale socket file is removed first, the mode is
applied, the file is removed again at shutdown);

=item * adopting sockets the process inherited: C<fd =E<gt> N>, systemd
socket activation (C<LISTEN_FDS>/C<LISTEN_PID>) and the hot-restart
hand-over C<PAGI_REUSE> (C<host:port:fd> or C<unix:/path:fd>,
comma-separated).

=back

A listener is a hash: C<spec> (the normalised spec that
L<PAGI::Server/listeners> reports: C<< {type => 'tcp', host, port} >> or
C<< {type => 'unix', path} >>), C<handle> (the socket), C<owned> (true when
this process created a Unix socket file and so removes it at shutdown),
C<inherited> (true when the socket came from another process) and
C<reuseport> (true for an C<SO_REUSEPORT> TCP socket, one member of the
port's group).

=head1 METHODS

=head2 requested

    my @specs = PAGI::Server::Listen->requested($config);

The listeners the options ask for, in order: C<< {type => 'tcp', host,
port, explicit} >>, C<< {type => 'unix', path, mode} >> or
C<< {type => 'fd', fd} >>. C<explicit> is false for the default
127.0.0.1:5000, which inherited sockets replace.

=cut

sub requested {
    my ($class, $config) = @_;
    if (my $list = $config->{listen}) {
        return map { _listen_entry($_) } @$list;
    }
    return { type => 'unix', path => $config->{socket}, mode => $config->{socket_mode} }
        if defined $config->{socket};
    return { type => 'fd', fd => $config->{fd} } if defined $config->{fd};
    my $explicit = $config->is_explicit('host') || $config->is_explicit('port');
    return { type => 'tcp', host => $config->{host}, port => $config->{port}, explicit => $explicit ? 1 : 0 };
}

sub _listen_entry {
    my ($entry) = @_;
    return { type => 'unix', path => $entry->{socket}, mode => $entry->{socket_mode} } if defined $entry->{socket};
    return { type => 'fd', fd => $entry->{fd} } if defined $entry->{fd};
    return { type => 'tcp', host => $entry->{host} // '127.0.0.1', port => $entry->{port}, explicit => 1 };
}

=head2 check_listen

    my $problem = PAGI::Server::Listen->check_listen($arrayref);

Used by the option registry: undef when every entry of a C<listen> option
is C<{host, port}>, C<{socket, socket_mode}> or C<{fd}>, else a description
of the first bad one.

=cut

my %KEYS = (socket => [qw(socket socket_mode)], fd => ['fd'], tcp => [qw(host port)]);

sub check_listen {
    my ($class, $list) = @_;
    return 'must be a non-empty array reference' unless ref $list eq 'ARRAY' && @$list;
    for my $i (0 .. $#$list) {
        my $e = $list->[$i];
        return "entry $i must be a hash reference" unless ref $e eq 'HASH';
        my @keys = sort keys %$e;
        my $kind = defined $e->{socket} ? 'socket' : defined $e->{fd} ? 'fd' : 'tcp';
        my %allowed = map { $_ => 1 } @{ $KEYS{$kind} };
        my @bad = grep { !$allowed{$_} } @keys;
        return "entry $i has unexpected key(s) " . join(', ', map {"'$_'"} @bad)
            . " (entries are {host, port}, {socket, socket_mode} or {fd})" if @bad;
        if ($kind eq 'tcp') {
            return "entry $i needs a port" unless defined $e->{port};
            return "entry $i: port must be a port number from 0 to 65535"
                unless $e->{port} =~ /\A\d+\z/ && $e->{port} <= 65535;
        }
        elsif ($kind eq 'socket') {
            return "entry $i: socket must be a path" if ref $e->{socket} || $e->{socket} eq '';
            my $problem = $class->check_mode($e->{socket_mode});
            return "entry $i: socket_mode $problem" if $problem;
        }
        else {
            return "entry $i: fd must be a file descriptor number" unless $e->{fd} =~ /\A\d+\z/;
        }
    }
    return undef;
}

=head2 check_mode

Undef when a C<socket_mode> is undefined or a number from 0 to 07777.

=cut

sub check_mode {
    my ($class, $mode) = @_;
    return undef unless defined $mode;
    return 'must be a numeric file mode such as 0660' unless $mode =~ /\A\d+\z/ && $mode <= 07777;
    return undef;
}

=head2 open_all

    my $listeners = PAGI::Server::Listen->open_all(\@specs,
        backlog => 2048, reuseport => 0, defer_tcp => 0, env => \%ENV);

Adopts what the process inherited (C<PAGI_REUSE>, then systemd fds when
C<LISTEN_PID> is this process; both variables are removed from C<env> so
children do not adopt them again), matches the requested specs against
them, and binds the rest. Inherited sockets that match no spec are served
too: they were handed over to be served. The default 127.0.0.1:5000 is not
bound when something was inherited. With C<defer_tcp> (the prefork master
under C<reuseport>), TCP specs are not bound: they come back in the second
return value, their port resolved, for the master to bind one socket per
worker slot (L</bind_group_member>).

Dies with C<Cannot listen on ADDRESS: REASON> on the first failure,
after closing what it opened.

=cut

sub open_all {
    my ($class, $specs, %o) = @_;
    my $env = $o{env} // \%ENV;
    my @inherited = (_from_reuse_env($env), _from_systemd($env));
    my (@out, @deferred);
    my $ok = eval {
        for my $spec (@$specs) {
            if ($spec->{type} eq 'tcp' && !$spec->{explicit} && @inherited) {
                next;    # the default address gives way to inherited sockets
            }
            my $match = _take_match(\@inherited, $spec);
            if ($match) {
                push @out, $match;
                next;
            }
            if ($spec->{type} eq 'fd') {
                push @out, $class->adopt_fd($spec->{fd});
            }
            elsif ($spec->{type} eq 'unix') {
                push @out, $class->bind_unix($spec->{path}, $spec->{mode}, $o{backlog});
            }
            elsif ($o{defer_tcp}) {
                push @deferred, $class->reserve_tcp($spec->{host}, $spec->{port});
            }
            else {
                push @out, $class->bind_tcp($spec->{host}, $spec->{port}, $o{backlog}, $o{reuseport});
            }
        }
        push @out, @inherited;    # handed to us without a matching spec: serve them too
        1;
    };
    unless ($ok) {
        my $error = $@;
        $class->close_all([ @out, @inherited ]);
        close $_->{reserved} for grep { $_->{reserved} } @deferred;
        die $error;
    }
    return wantarray ? (\@out, \@deferred) : \@out;
}

# Removes and returns the first inherited listener serving $spec.
sub _take_match {
    my ($inherited, $spec) = @_;
    for my $i (0 .. $#$inherited) {
        my $l = $inherited->[$i];
        my $have = $l->{spec};
        my $hit = $spec->{type} eq 'fd' ? fileno($l->{handle}) == $spec->{fd}
            : $spec->{type} ne $have->{type} ? 0
            : $spec->{type} eq 'unix' ? $have->{path} eq $spec->{path}
            : (_same_host($have->{host}, $spec->{host}) && ($spec->{port} == 0 || $have->{port} == $spec->{port}));
        return splice @$inherited, $i, 1 if $hit;
    }
    return undef;
}

sub _same_host {
    my ($a, $b) = @_;
    return 1 if $a eq $b;
    for ($a, $b) { s/\A\[(.*)\]\z/$1/ }
    my ($pa) = map { inet_pton(/:/ ? AF_INET6 : AF_INET, $_) } $a;
    my ($pb) = map { inet_pton(/:/ ? AF_INET6 : AF_INET, $_) } $b;
    return defined $pa && defined $pb && $pa eq $pb;
}

# PAGI_REUSE=host:port:fd,unix:/path:fd from the master being replaced.
sub _from_reuse_env {
    my ($env) = @_;
    my $value = delete $env->{PAGI_REUSE};
    return () unless defined $value && length $value;
    my @out;
    for my $item (split /,/, $value) {
        my ($fd) = $item =~ /:(\d+)\z/ or die "PAGI_REUSE: cannot parse '$item'\n";
        my $l = __PACKAGE__->adopt_fd($fd, 'PAGI_REUSE');
        # The old master still owns a Unix socket file until the new one
        # takes over (PAGI::Server::Workers sets owned once it has).
        $l->{reused} = 1;
        push @out, $l;
    }
    return @out;
}

# systemd socket activation: fds 3 .. 3+LISTEN_FDS-1 when LISTEN_PID is us.
sub _from_systemd {
    my ($env) = @_;
    return () unless defined $env->{LISTEN_PID} && defined $env->{LISTEN_FDS};
    my ($pid, $n) = ($env->{LISTEN_PID}, $env->{LISTEN_FDS});
    # Only the process systemd meant: a child that inherited the variables
    # must not take the sockets too.
    return () unless $pid =~ /\A\d+\z/ && $pid == $$ && $n =~ /\A\d+\z/;
    delete @$env{qw(LISTEN_PID LISTEN_FDS LISTEN_FDNAMES)};
    return map { __PACKAGE__->adopt_fd($_, 'LISTEN_FDS') } 3 .. 3 + $n - 1;
}

=head2 adopt_fd

    my $listener = PAGI::Server::Listen->adopt_fd($fd);

Wraps an inherited listening socket (TCP or Unix). Dies unless C<$fd> is
an open, listening stream socket. The fd is made close-on-exec, like the
sockets this process binds.

=cut

sub adopt_fd {
    my ($class, $fd, $source) = @_;
    my $what = 'fd ' . $fd . ($source ? " (from $source)" : '');
    open(my $fh, '+<&=', $fd) or die "Cannot listen on $what: $!\n";
    my $addr = getsockname($fh) or die "Cannot listen on $what: not a socket\n";
    my $type = unpack 'i', getsockopt($fh, SOL_SOCKET, SO_TYPE) // pack 'i', 0;
    die "Cannot listen on $what: not a stream socket\n" unless $type == SOCK_STREAM;
    my $accepting = getsockopt($fh, SOL_SOCKET, SO_ACCEPTCONN);
    die "Cannot listen on $what: the socket is not listening\n" unless $accepting && unpack 'i', $accepting;
    _set_cloexec($fh, 1);
    my $spec = _spec_of_address($addr) or die "Cannot listen on $what: unsupported socket family\n";
    return { spec => $spec, handle => $fh, owned => 0, inherited => 1 };
}

sub _spec_of_address {
    my ($addr) = @_;
    my $family = sockaddr_family($addr);
    if ($family == AF_INET) {
        my ($port, $ip) = unpack_sockaddr_in($addr);
        return { type => 'tcp', host => inet_ntop(AF_INET, $ip), port => $port };
    }
    if ($family == AF_INET6) {
        my ($port, $ip) = unpack_sockaddr_in6($addr);
        return { type => 'tcp', host => inet_ntop(AF_INET6, $ip), port => $port };
    }
    if ($family == AF_UNIX) {
        my $path = unpack_sockaddr_un($addr);
        $path =~ s/\0.*\z//s;
        return { type => 'unix', path => $path };
    }
    return undef;
}

=head2 bind_tcp

    my $listener = PAGI::Server::Listen->bind_tcp($host, $port, $backlog, $reuseport);

With C<$reuseport> the socket has C<SO_REUSEPORT> and the listener's
C<reuseport> is true: such a socket is this process's own member of the
port's group, and L<PAGI::Server> closes it as soon as it starts draining.

=cut

sub bind_tcp {
    my ($class, $host, $port, $backlog, $reuseport) = @_;
    my $socket = IO::Socket::IP->new(
        LocalHost => $host,
        LocalPort => $port,
        Listen    => $backlog || Socket::SOMAXCONN(),
        ReuseAddr => 1,
        ($reuseport ? (ReusePort => 1) : ()),
        Proto     => 'tcp',
    ) or die 'Cannot listen on ' . _host_port($host, $port) . ': ' . (_reason($@) || $!) . "\n";
    return { spec => { type => 'tcp', host => $socket->sockhost, port => $socket->sockport },
             handle => $socket, owned => 0, inherited => 0, reuseport => $reuseport ? 1 : 0 };
}

# IO::Socket::IP prefixes its own context; the OS reason is what helps.
sub _reason {
    my ($error) = @_;
    return '' unless defined $error && length $error;
    $error =~ s/\s+\z//;
    $error =~ s/\A.*?: (?=[A-Z][a-z])//s if $error =~ /in use|denied|assign|not known|Name or service/;
    return $error;
}

sub _host_port {
    my ($host, $port) = @_;
    return ($host =~ /:/ ? "[$host]" : $host) . ":$port";
}

=head2 reserve_tcp

For C<reuseport> under workers: binds (without listening) a
C<SO_REUSEPORT> socket so port 0 resolves once, for every worker. The
reserving socket never listens, so the kernel never queues connections on
it. Returns C<< {type => 'tcp', host, port, reserved => $socket} >>.

=cut

sub reserve_tcp {
    my ($class, $host, $port) = @_;
    my $socket = IO::Socket::IP->new(
        LocalHost => $host, LocalPort => $port, ReuseAddr => 1, ReusePort => 1, Proto => 'tcp',
        Type => SOCK_STREAM,
    ) or die 'Cannot listen on ' . _host_port($host, $port) . ': ' . (_reason($@) || $!) . "\n";
    return { type => 'tcp', host => $host, port => $socket->sockport, reserved => $socket };
}

=head2 bind_group_member

    my $listeners = PAGI::Server::Listen->bind_group_member(\@reserved, $backlog);

One listening C<SO_REUSEPORT> socket on each address L</reserve_tcp>
reserved: one worker slot's members of the ports' groups. Dies with
C<Cannot listen on ADDRESS: REASON> after closing what it opened.

=cut

sub bind_group_member {
    my ($class, $reserved, $backlog) = @_;
    my @out;
    for my $spec (@$reserved) {
        my $l = eval { $class->bind_tcp($spec->{host}, $spec->{port}, $backlog, 1) };
        unless ($l) {
            my $error = $@;
            $class->close_all(\@out);
            die $error;
        }
        push @out, $l;
    }
    return \@out;
}

=head2 bind_unix

    my $listener = PAGI::Server::Listen->bind_unix($path, $mode, $backlog);

Removes a stale socket file first (one nobody accepts on), refuses to
replace a file that is not a socket or a socket another server is serving,
binds with the umask narrowed to C<$mode> (so the socket is never more
open than asked, not even for a moment) and chmods it to C<$mode>.

=cut

sub bind_unix {
    my ($class, $path, $mode, $backlog) = @_;
    my $where = "unix:$path";
    if (-e $path || -l $path) {
        die "Cannot listen on $where: the path exists and is not a socket\n" unless -S $path;
        my $probe = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM);
        die "Cannot listen on $where: another server is listening there\n" if $probe;
        unlink $path or die "Cannot listen on $where: cannot remove the stale socket: $!\n";
    }
    my $old_umask = defined $mode ? umask(07777 & ~$mode) : undef;
    my $socket = IO::Socket::UNIX->new(
        Local  => $path,
        Type   => SOCK_STREAM,
        Listen => $backlog || Socket::SOMAXCONN(),
    );
    my $error = $!;
    umask $old_umask if defined $old_umask;
    die "Cannot listen on $where: $error\n" unless $socket;
    if (defined $mode && !chmod($mode, $path)) {
        my $e = $!;
        unlink $path;
        die "Cannot listen on $where: chmod: $e\n";
    }
    return { spec => { type => 'unix', path => $path }, handle => $socket, owned => 1, inherited => 0 };
}

=head2 close_all

    PAGI::Server::Listen->close_all($listeners);

Closes the sockets and removes the Unix socket files this process owns
(never those it inherited, and never one handed to a new master).

=cut

sub close_all {
    my ($class, $listeners) = @_;
    for my $l (@{ $listeners // [] }) {
        my $fh = $l->{handle} or next;
        # The engine keeps its own duplicate; this closes ours.
        close $fh;
        if ($l->{owned} && $l->{spec}{type} eq 'unix' && -S $l->{spec}{path}) {
            unlink $l->{spec}{path};
        }
    }
}

=head2 reuse_env

    local $ENV{PAGI_REUSE} = PAGI::Server::Listen->reuse_env($listeners);

The C<PAGI_REUSE> value describing C<$listeners> for a new master. Also
clears close-on-exec on their fds so they survive the C<exec>: call it in
the forked child, just before C<exec>.

=cut

sub reuse_env {
    my ($class, $listeners) = @_;
    my @items;
    for my $l (@$listeners) {
        my $fh = $l->{handle} or next;
        _set_cloexec($fh, 0);
        my $s = $l->{spec};
        push @items, $s->{type} eq 'unix'
            ? "unix:$s->{path}:" . fileno($fh)
            : _host_port($s->{host}, $s->{port}) . ':' . fileno($fh);
    }
    return join ',', @items;
}

sub _set_cloexec {
    my ($fh, $on) = @_;
    my $flags = fcntl($fh, F_GETFD, 0) // return;
    $flags = $on ? ($flags | FD_CLOEXEC) : ($flags & ~FD_CLOEXEC);
    fcntl($fh, F_SETFD, $flags);
}

=head2 describe

    my $text = PAGI::Server::Listen->describe($spec, $tls);

C<http://127.0.0.1:5000/>, C<https://[::1]:8443/> or C<unix:/run/app.sock>,
for logs and the banner.

=cut

sub describe {
    my ($class, $spec, $tls) = @_;
    return "unix:$spec->{path}" if $spec->{type} eq 'unix';
    return 'fd ' . $spec->{fd} if $spec->{type} eq 'fd';
    return ($tls ? 'https' : 'http') . '://' . _host_port($spec->{host}, $spec->{port}) . '/';
}

1;
