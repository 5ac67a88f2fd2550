package PAGI::Server::Groups;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Future;
use Scalar::Util qw(weaken);
use PAGI::Server::Scope ();

=head1 NAME

PAGI::Server::Groups - rooms and channels fanned out by the engine: the C<groups> extension

=head1 SYNOPSIS

    # A chat room: every connection joins, every message goes to the others.
    async sub app ($scope, $receive, $send) {
        return unless $scope->{type} eq 'websocket';
        my $groups = $scope->{extensions}{groups} or die 'no groups extension';
        await $receive->();                                  # websocket.connect
        await $send->({ type => 'websocket.accept' });
        await $send->({ type => 'groups.join', group => 'room:lobby' });
        while (1) {
            my $event = await $receive->();
            last if $event->{type} eq 'websocket.disconnect';
            await $send->({ type => 'groups.publish', group => 'room:lobby',
                            text => $event->{text} // '', exclude_self => 1 });
        }
        # leaving is automatic when the connection ends
    }

    # From anywhere (a timer, lifespan, an http handler):
    my $hub = $server->groups;              # or $scope->{extensions}{groups}{hub}
    my $n   = await $hub->publish('news', { text => 'hello', event => 'news', id => 7 });
    my $sub = $hub->subscribe('news', sub ($message) { say $message->{text} });
    $hub->unsubscribe($sub);
    say $hub->count('room:lobby');          # members here, now

=head1 DESCRIPTION

L<PAGI::Server> advertises the C<groups> extension in every C<http>,
C<websocket> and C<sse> scope:

    $scope->{extensions}{groups} = {
        backend => 'local',            # 'redis' with the pubsub option (cross-process)
        node    => 'host:pid:random',  # this process's node id
        hub     => $hub,               # this object, one per server process
    };

A WebSocket connection or SSE stream joins named groups; publishing to a
group hands the message to the engine, which encodes it once per
protocol (one WebSocket text or binary frame; one SSE event) and hands
that one buffer to every member connection, on its IO thread: Perl does
no work per member. A member with nothing of its own waiting to be
written, on a plain TCP or Unix socket, gets it written to its socket at
once by the fan-out; any other member gets it queued behind its own
output, so a member never sees a group message overtake what its app
sent before. The same hashref is shared by every scope; do not
change it.

=head2 Events

Sent with the scope's C<$send>; each returns a Future. A bad field fails
the Future with a message naming the event and the field, for example
C<groups.join: 'group' must be a non-empty string>; nothing is done then.

=over 4

=item C<groups.join> (websocket after C<websocket.accept>, sse after C<sse.start>)

Field C<group>. This connection joins the group; joining twice is a
no-op. Before the accept (or start) the Future fails. After the
connection is gone it is a no-op, as every C<$send> then.

=item C<groups.leave> (websocket, sse)

Field C<group>. Leaves the group; a no-op when not a member. A
connection leaves all its groups when it ends (the count drops when its
final event, C<websocket.disconnect> or C<sse.disconnect>, is handled).

=item C<groups.publish> (http, websocket, sse)

Fields: C<group>; exactly one of C<text> (characters, sent UTF-8
encoded) or C<bytes> (a byte string); optional C<event>, C<id> (strings
without CR or LF; C<id> without NUL) and C<retry> (a non-negative
integer) for SSE members; optional C<exclude_self> (websocket and sse
scopes only: this connection does not get it).

WebSocket members get a text frame for C<text> and a binary frame for
C<bytes>; the SSE fields are ignored for them. SSE members get one event
whose data is the text (or the bytes read as UTF-8), with C<event>,
C<id> and C<retry> lines when given. Perl subscribers of the group (see
L</subscribe>) get the message as a hash.

The Future resolves to the number of local connection members the
message was queued for (slow members left out are not counted). With the
redis backend it resolves once Redis accepted it, and fails with
C<groups.publish: redis unavailable: ...> when Redis cannot be reached
(the local members still got it).

=back

Group names are 1 to 256 bytes (UTF-8 encoded), any characters but NUL.

=head2 Slow members

Fan-out never waits for anyone. A group message that finds a member's
connection with more than C<group_max_buffered> bytes unwritten (1 MiB
by default; the app's own sends count too) is not queued for it, and the
server option C<group_overflow> decides what happens to the member:

=over 4

=item C<drop> (the default)

The member's connection is closed at once: a WebSocket app sees
C<websocket.disconnect> with code 1008 and reason C<too slow for group
messages>; an SSE app sees C<sse.disconnect> with reason
C<queue_overflow>. Counted in C<dropped>.

=item C<skip>

The message is left out for that member only; it stays connected and
gets later messages once it caught up. Counted in C<skipped>.

=back

So a member costs at most C<group_max_buffered> plus one message of
memory, however slow it is, and the others get every message as fast as
they read. The write stall timer (C<timeout>) still drops a client that
reads nothing at all.

Bursts are fair to members that keep up: when a message leaves some member
with more than half of C<group_max_buffered> unwritten, the members'
writers get their turn before the next message of the same burst (a batch
of publishes, or messages read from Redis together) is fanned out, so only
a member whose connection does not take the bytes is found slow.

=head1 METHODS

=head2 publish

    my $f = $hub->publish($group, { text => $t, event => $e, id => $i, retry => $ms });
    my $f = $hub->publish($group, { bytes => $b, exclude => $connection_id });

Like the C<groups.publish> event, usable from any code (C<exclude> names
an engine connection id instead of C<exclude_self>). Before the server
listens, only Perl subscribers get the message, and the Future gives 0.

=head2 subscribe

    my $id = $hub->subscribe($group, sub ($message) { ... });

Calls the callback on the Perl thread for every message published to the
group, by this process (or, with the redis backend, by any node):
C<< { group, text | bytes, event, id, retry, node } >> (C<event>, C<id>
and C<retry> only when the publisher gave them; C<node> is the
publisher's node id). A callback that dies is warned about; the others
still run. Returns a subscription id (a string). Subscribing may happen
before the server listens (in lifespan startup, say).

=head2 unsubscribe

    $hub->unsubscribe($id);     # 1 if it was subscribed, else 0

=head2 count

    my $n = $hub->count($group);

The local connection members of the group now (Perl subscribers are not
counted): a plain number, no waiting.

=head2 cluster_count

    my $n = await $hub->cluster_count($group);

A Future of the member count across the cluster: the sum over live nodes
with the redis backend, the local count without.

=head2 backend, node

C<local> or C<redis>; this process's node id (C<host:pid:random>).

=head2 redis

    my $value = await $hub->redis(GET => 'session:abc');

A Future of a Redis command's reply (strings, integers, undef for nil,
array references). Fails without the redis backend, or when Redis
cannot be reached.

=head2 stats

    my $s = $hub->stats;

Engine-wide counters since the server started: C<published> (messages
published here), C<delivered> (messages written or queued for a member, one per
member per message), C<delivered_direct> (of those, the ones written
straight to the member's socket by the fan-out), C<skipped> and C<dropped> (see L</Slow members>),
C<redis_publish_failed>, C<redis_reconnects>, and C<redis_connected> (1
while the bridge is connected; always 0 with the local backend).

=head1 SEE ALSO

L<PAGI::Server> (the C<group_overflow> and C<group_max_buffered>
options), L<PAGI::Server::Native/GROUPS>.

=cut

my $DONE = $PAGI::Server::Scope::DONE;

my @STATS = qw(published delivered delivered_direct skipped dropped redis_publish_failed redis_reconnects redis_connected);

sub new {
    my ($class, %args) = @_;
    my $self = bless {
        backend  => $args{backend} // 'local',
        subs     => {},    # subscription id -> [group, callback]
        by_group => {},    # group -> [subscription ids, oldest first]
        pending  => {},    # reply token -> [future, event name]
        next_sub => 0,
    }, $class;
    weaken($self->{server} = $args{server}) if $args{server};
    return $self;
}

sub backend { $_[0]{backend} }

sub node {
    my ($self) = @_;
    # Per process: a forked copy is another node.
    return $self->{node} if $self->{node} && $self->{node_pid} == $$;
    require Sys::Hostname;
    my $host = eval { Sys::Hostname::hostname() } // 'localhost';
    $self->{node_pid} = $$;
    return $self->{node} = sprintf '%s:%d:%08x', $host, $$, int rand 0xffffffff;
}

# The engine while it serves; undef before listen and after the stop.
sub _engine {
    my $server = $_[0]{server} or return undef;
    return $server->{running} ? $server->{engine} : undef;
}

sub _new_future {
    my ($self) = @_;
    return $self->{server} ? $self->{server}->_future_class->new : Future->new;
}

sub _fail { Future->fail("$_[0]\n", 'pagi') }

sub _engine_fail {
    my ($what, $error) = @_;
    $error =~ s/\APAGI::Server::Native::\w+: //;
    $error =~ s/ at \S+ line \d+\.?\n\z//;
    chomp $error;
    return _fail("$what: $error");
}

# A problem with a group name, or undef.
sub _check_group {
    my ($what, $group) = @_;
    return "$what: 'group' must be a non-empty string" unless defined $group && !ref $group && length $group;
    my $octets = "$group";
    utf8::encode($octets);
    return "$what: 'group' must be at most 256 bytes, got " . length($octets) if length $octets > 256;
    return "$what: 'group' must not contain NUL" if $group =~ /\0/;
    return undef;
}

# A problem with a message's fields, or undef. $kind: the scope type the
# event came from, undef for the hub's publish.
sub _check_message {
    my ($what, $m, $kind) = @_;
    my ($text, $bytes) = @$m{qw(text bytes)};
    return "$what: exactly one of 'text' and 'bytes' is required" if defined $text == defined $bytes;
    return "$what: 'text' must be a string, not a reference" if ref $text;
    if (defined $bytes) {
        return "$what: 'bytes' must be a byte string, not a reference" if ref $bytes;
        my $copy = $bytes;
        return "$what: 'bytes' must be bytes (it has characters above 255; encode it first)"
            unless utf8::downgrade($copy, 1);
    }
    for my $field (qw(event id)) {
        my $v = $m->{$field};
        next unless defined $v;
        return "$what: '$field' must be a string" if ref $v;
        return "$what: '$field' must not contain CR or LF" if $v =~ /[\r\n]/;
    }
    return "$what: 'id' must not contain NUL" if defined $m->{id} && $m->{id} =~ /\0/;
    my $retry = $m->{retry};
    return "$what: 'retry' must be a non-negative integer"
        if defined $retry && (ref $retry || $retry !~ /\A\d+\z/);
    if (defined $m->{exclude_self}) {
        return "$what: 'exclude_self' is for websocket and sse scopes" if !$kind || $kind eq 'http';
        return "$what: 'exclude_self' must be a boolean" if ref $m->{exclude_self};
    }
    if (!$kind && defined $m->{exclude}) {
        return "$what: 'exclude' must be a connection id (a positive integer)"
            if ref $m->{exclude} || $m->{exclude} !~ /\A[1-9]\d*\z/;
    }
    return undef;
}

sub publish {
    my ($self, $group, $message) = @_;
    my $what = 'groups.publish';
    return _fail("$what: the message must be a hash reference") unless ref $message eq 'HASH';
    my $problem = _check_group($what, $group) // _check_message($what, $message, undef);
    return _fail($problem) if defined $problem;
    return $self->_publish($group, $message, $message->{exclude});
}

# Checked already. The engine fans out and answers with the member count.
sub _publish {
    my ($self, $group, $m, $exclude) = @_;
    my $engine = $self->_engine;
    unless ($engine) {
        # No connections yet (or any more): only Perl subscribers hear it.
        $self->_ev_message({ group => $group, map({ defined $m->{$_} ? ($_ => $m->{$_}) : () } qw(text bytes event id retry)), node => undef });
        return Future->done(0);
    }
    my $is_text = defined $m->{text} ? 1 : 0;
    my $token = eval {
        $engine->group_publish($group, $is_text, $is_text ? $m->{text} : $m->{bytes},
            $m->{event}, $m->{id}, $m->{retry}, $exclude // 0);
    };
    return _engine_fail('groups.publish', $@) unless defined $token;
    return $self->_await_reply($token, 'groups.publish');
}

sub _await_reply {
    my ($self, $token, $what) = @_;
    my $f = $self->_new_future;
    $self->{pending}{$token} = [ $f, $what ];
    $self->{server}->_flush_soon;
    return $f;
}

sub subscribe {
    my ($self, $group, $callback) = @_;
    my $problem = _check_group('groups.subscribe', $group);
    Carp::croak("PAGI::Server::Groups::subscribe: $problem") if defined $problem;
    Carp::croak('PAGI::Server::Groups::subscribe: the callback must be a code reference') unless ref $callback eq 'CODE';
    my $id = '' . ++$self->{next_sub};
    $self->{subs}{$id} = [ $group, $callback ];
    my $list = $self->{by_group}{$group} //= [];
    push @$list, $id;
    if (@$list == 1 && (my $engine = $self->_engine)) {
        $engine->group_subscribe($group, 1);
        $self->{server}->_flush_soon;
    }
    return $id;
}

sub unsubscribe {
    my ($self, $id) = @_;
    my $sub = delete $self->{subs}{ $id // '' } or return 0;
    my $group = $sub->[0];
    my $list = $self->{by_group}{$group};
    @$list = grep { $_ ne $id } @$list;
    unless (@$list) {
        delete $self->{by_group}{$group};
        if (my $engine = $self->_engine) {
            $engine->group_subscribe($group, 0);
            $self->{server}->_flush_soon;
        }
    }
    return 1;
}

sub count {
    my ($self, $group) = @_;
    my $problem = _check_group('groups.count', $group);
    Carp::croak("PAGI::Server::Groups::count: $problem") if defined $problem;
    my $engine = $self->_engine or return 0;
    return $engine->group_count($group);
}

sub cluster_count {
    my ($self, $group) = @_;
    my $problem = _check_group('groups.cluster_count', $group);
    return _fail($problem) if defined $problem;
    my $engine = $self->_engine or return Future->done(0);
    my $token = eval { $engine->query_cluster_count($group) };
    return _engine_fail('groups.cluster_count', $@) unless defined $token;
    return $self->_await_reply($token, 'groups.cluster_count');
}

sub redis {
    my ($self, @command) = @_;
    return _fail('groups.redis: no redis backend (start the server with the pubsub option)')
        unless $self->{backend} eq 'redis';
    return _fail('groups.redis: a command is required') unless @command;
    my $engine = $self->_engine or return _fail('groups.redis: the server is not running');
    my $token = eval { $engine->query_redis(@command) };
    return _engine_fail('groups.redis', $@) unless defined $token;
    return $self->_await_reply($token, 'groups.redis');
}

sub stats {
    my ($self) = @_;
    my $server = $self->{server};
    my $engine = $server && $server->{engine};
    return $engine->group_stats if $engine;
    return { map { $_ => 0 } @STATS };
}

# The server's part.

# The engine runs: it learns the groups Perl subscribed to meanwhile.
sub _engine_started {
    my ($self) = @_;
    my $engine = $self->_engine or return;
    $engine->group_subscribe($_, 1) for sort keys %{ $self->{by_group} };
}

# The engine is gone: nothing will answer what is pending.
sub _engine_stopped {
    my ($self) = @_;
    my $pending = $self->{pending};
    $self->{pending} = {};
    for my $token (sort { $a <=> $b } keys %$pending) {
        my ($f, $what) = @{ $pending->{$token} };
        $f->fail("$what: the server stopped\n", 'pagi') unless $f->is_ready;
    }
}

sub _ev_reply {
    my ($self, $token, $ok, $value) = @_;
    my $entry = delete $self->{pending}{$token} or return;
    my ($f, $what) = @$entry;
    return if $f->is_ready;    # cancelled by its caller
    if ($ok) { $f->done($value) }
    else     { $f->fail("$what: $value\n", 'pagi') }
}

sub _ev_message {
    my ($self, $message) = @_;
    my $list = $self->{by_group}{ $message->{group} } or return;
    $message->{node} //= $self->node;
    for my $id (@$list) {
        my $sub = $self->{subs}{$id} or next;    # unsubscribed by an earlier callback
        next if eval { $sub->[1]->({%$message}); 1 };
        my $error = $@;
        $error =~ s/\s+\z//;
        warn "PAGI::Server::Groups: subscriber callback for group '$message->{group}' died: $error\n";
    }
}

# groups.* events from a scope ($kind: http, websocket or sse).
sub _scope_event {
    my ($req, $event, $type, $kind) = @_;
    my $hub = $req->{server}->groups;
    if ($type eq 'groups.publish') {
        my $problem = _check_group($type, $event->{group}) // _check_message($type, $event, $kind);
        return _fail($problem) if defined $problem;
        my $exclude = $kind ne 'http' && $event->{exclude_self} ? $req->{id} : undef;
        return $hub->_publish($event->{group}, $event, $exclude);
    }
    if (($type ne 'groups.join' && $type ne 'groups.leave') || $kind eq 'http') {
        return _fail("Unrecognized event type '$type' for $kind protocol");
    }
    my $problem = _check_group($type, $event->{group});
    return _fail($problem) if defined $problem;
    my $gone = $kind eq 'sse' ? defined $req->{gone} : $req->{gone};
    return $DONE if $gone || $req->{state} == 2;
    my $engine = $req->{engine};
    if ($type eq 'groups.join') {
        if ($req->{state} != 1 || $req->{declined}) {
            return _fail($kind eq 'sse' ? 'groups.join: sent before sse.start' : 'groups.join: sent before websocket.accept');
        }
        my $ok = eval { $engine->group_join($req->{id}, $event->{group}, $kind eq 'sse' ? 1 : 0); 1 };
        return _engine_fail($type, $@) unless $ok;
    }
    else {
        my $ok = eval { $engine->group_leave($req->{id}, $event->{group}); 1 };
        return _engine_fail($type, $@) unless $ok;
    }
    $req->{server}->_flush_soon;
    return $DONE;
}

1;
