package PAGI::Simple::Session::Store::Redis;
use v5.36;
use Future;
use JSON::MaybeXS ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Session::Store::Redis - PAGI::Simple sessions kept in Redis, through the server's connection

=head1 SYNOPSIS

    use PAGI::Simple;
    use PAGI::Simple::Session::Store::Redis;

    my $app = PAGI::Simple->new(name => 'shop');
    $app->sessions(secrets => [$secret], expires => 3600,
        store => PAGI::Simple::Session::Store::Redis->new(prefix => 'shop:session:'));

    # pagi-server --app app.pl --workers 4 --pubsub redis://127.0.0.1:6379/0

=head1 DESCRIPTION

A server-side session store (see L<PAGI::Simple::Session/STORES>) for apps
that run in several worker processes or on several machines: every worker
sees the same sessions. It opens no connection of its own: commands go
through the Redis connection pagi-server already holds for rooms and channels
(C<--pubsub redis://...>), via the hub the server offers in every scope as
C<< $scope->{extensions}{groups}{hub} >> (C<< $hub->redis(@command) >>, which
returns a L<Future> of the reply). The store finds the hub in the request's
scope (C<for_scope>), so it can be created before the server starts.

Each session is one Redis string, C<PREFIX . $id>, holding the session data as
JSON (UTF-8), written with C<SET key value EX seconds> so Redis drops it when
the session expires; C<delete> is C<DEL key>. The store is asynchronous
(C<is_async> is true): PAGI::Simple loads the session before the handler
runs and waits for a write before the response starts. A request made while
Redis is unreachable fails: a load answers 500 from the handler's error
path, a save answers 500 instead of the response.

Without the C<groups> extension, or with its C<local> backend (the server
was started without C<--pubsub redis://...>), every call fails with a
message saying so.

=head1 METHODS

=over

=item new(prefix => 'pagi:session:', hub => $hub)

C<prefix> is put before every session id to make the Redis key. C<hub> is
optional: a C<PAGI::Server::Groups> object to use instead of the one in the
request scopes (for instance C<< $server->groups >> when embedding the server).

=item get($id)

Future of the session data (a hashref), or undef when Redis has no such key
(never set, deleted, expired) or its value is not a JSON object (a warning
says so).

=item set($id, $data, $expires_epoch)

Future of 1 once Redis stored the JSON of C<$data> with an expiry of
C<$expires_epoch - time> seconds (at least 1).

=item delete($id)

Future of 1 once Redis deleted the key.

=item is_async

True.

=item for_scope($scope)

Takes the hub from C<< $scope->{extensions}{groups}{hub} >> (unless C<hub>
was given to C<new>). PAGI::Simple calls it with each request's scope.

=item key($id)

The Redis key of a session id: C<prefix . $id>.

=item prefix

=back

=head1 SEE ALSO

L<PAGI::Simple::Session>, L<PAGI::Simple::Session::Store::Memory>, pagi-server's C<--pubsub> option.

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 1, canonical => 1);

sub new ($class, %o) {
    my %known = map { $_ => 1 } qw(prefix hub);
    for (keys %o) { die "PAGI::Simple::Session::Store::Redis: unknown option '$_'\n" unless $known{$_} }
    my $prefix = $o{prefix} // 'pagi:session:';
    die "PAGI::Simple::Session::Store::Redis: 'prefix' must be a string\n" if ref $prefix;
    return bless { prefix => $prefix, hub => $o{hub}, fixed_hub => defined $o{hub} ? 1 : 0 }, $class;
}

sub is_async ($self) { 1 }
sub prefix ($self)   { $self->{prefix} }
sub key ($self, $id) { $self->{prefix} . $id }

sub for_scope ($self, $scope) {
    return if $self->{fixed_hub};
    my $groups = ref $scope eq 'HASH' && $scope->{extensions} ? $scope->{extensions}{groups} : undef;
    # One hub per server process: the scope's is always the current one (also after a fork).
    $self->{hub} = $groups->{hub} if ref $groups eq 'HASH' && $groups->{hub};
    return;
}

# The hub's redis(@command), or a failed Future saying why there is none.
sub _redis ($self, @command) {
    my $hub = $self->{hub};
    return Future->fail("PAGI::Simple::Session::Store::Redis: no Redis connection: the server offers no groups "
        . "extension (run the app under pagi-server with --pubsub redis://HOST:PORT)\n") unless $hub;
    my $backend = $hub->can('backend') ? $hub->backend : 'redis';
    return Future->fail("PAGI::Simple::Session::Store::Redis: the server's groups backend is '$backend', not redis "
        . "(start pagi-server with --pubsub redis://HOST:PORT)\n") if $backend ne 'redis';
    my $f = eval { $hub->redis(@command) };
    return Future->fail("PAGI::Simple::Session::Store::Redis: $command[0]: $@") unless $f;
    return $f;
}

sub get ($self, $id) {
    my $key = $self->key($id);
    return $self->_redis(GET => $key)->then(sub ($value = undef, @) {
        return Future->done(undef) unless defined $value;
        my $data = eval { $JSON->decode($value) };
        return Future->done($data) if ref $data eq 'HASH';
        warn "PAGI::Simple::Session::Store::Redis: $key does not hold a JSON object; the session starts empty\n";
        return Future->done(undef);
    });
}

sub set ($self, $id, $data, $expires) {
    my $ttl = int($expires - time);
    $ttl = 1 if $ttl < 1;
    return $self->_redis(SET => $self->key($id), $JSON->encode($data), EX => $ttl)->then(sub (@) { Future->done(1) });
}

sub delete ($self, $id) {
    return $self->_redis(DEL => $self->key($id))->then(sub (@) { Future->done(1) });
}

1;
