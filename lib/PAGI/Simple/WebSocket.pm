package PAGI::Simple::WebSocket;
use v5.36;
use Future;
use Future::AsyncAwait;
use JSON::MaybeXS ();
use Scalar::Util qw(blessed weaken);

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::WebSocket - the C<$ws> of a PAGI::Simple WebSocket route

=head1 SYNOPSIS

    $app->websocket('/chat/:room' => sub ($ws) {
        $ws->join($ws->path_params->{room});
        $ws->on(message => sub ($data) {
            $ws->broadcast("someone said: $data");                       # every other client of /chat/:room
            $ws->broadcast($ws->path_params->{room}, "to the room: $data");   # the room, minus me
        });
        $ws->on(close => sub ($code, $reason) { ... });
    });

=head1 LIFECYCLE

The framework reads C<websocket.connect>, sends C<websocket.accept>, runs the
handler (which registers callbacks; it may be async), then dispatches every
received message to the C<message> callbacks until C<websocket.disconnect>,
when it runs the C<close> callbacks and leaves every room. A dying handler or
callback runs the C<error> callbacks and closes with 1011.

=head1 METHODS

=over

=item on(message => sub ($data) {}), on(close => sub ($code, $reason) {}), on(error => sub ($err) {})

Several callbacks per event run in order. C<$data> is the text (characters)
or, for binary frames, the bytes.

=item send($data, [binary => 1]) returns Future, close([$code = 1000], [$reason = '']) returns Future, is_closed

=item join($room), leave($room), leave_all, rooms, in_room($room)

=item room_count($room), room_cluster_count($room)

The room's members in this process now (a number), and a Future of its
members across every worker and machine (pagi-server with C<--pubsub
redis://...>; otherwise the local count). Both come from
C<< $app->pubsub >> (C<room_count>, C<room_cluster_count>) and include Perl
subscribers of the room in this process.

=item broadcast($message) / broadcast($room, $message) returns count

With one argument, to every B<other> client connected to the same route;
with two, to every other member of the room. The sender is excluded by
default; C<broadcast_all> takes the same arguments and includes the sender.
C<broadcast_others> is kept as an alias of the two-argument C<broadcast>.

The message is sent as a text frame: a string as it is, a reference as its
JSON. The count is the receivers reached in this process (members, and
Perl subscribers of the room, without the sender when excluded); with the
server's C<groups> extension the message also reaches members on other
workers, which are not counted.

=item stash, param($name), path_params, scope, app, id

=item query_param($name), query_params($name)

The handshake's query string: the last value of a name, or all of them
(decoded as UTF-8, as C<< $c->req >> does).

=back

Rooms and the route group go through the app's L<PAGI::Simple::PubSub>.
Under PAGI::Server (the C<groups> extension) the connection itself is a
member of engine groups C<room:NAME> and C<ws-route:PATH>, joined after the
accept with C<groups.join> on its own C<$send>, and broadcasts are one
C<groups.publish> the engine writes to every member (see
L<PAGI::Simple/ROOMS AND CHANNELS ACROSS WORKERS>). Elsewhere the in-memory
hub delivers through a Perl callback per member; broadcasts that arrive
between subscribing and the accept wait for the accept.

=cut

my $NEXT_ID = 0;

sub new ($class, %args) {
    my $self = bless { handlers => { message => [], close => [], error => [] }, rooms => {}, stash => {},
        pending => [], id => 'ws' . $$ . '.' . ++$NEXT_ID, %args }, $class;
    return $self;
}

sub id ($self)          { $self->{id} }
sub scope ($self)       { $self->{scope} }
sub app ($self)         { $self->{app} }
sub stash ($self)       { $self->{stash} }
sub path_params ($self) { $self->{path_params} }
sub param ($self, $name) { $self->{path_params}{$name} }
# The query string of the request that opened this stream, parsed as $c->req does.
sub _req ($self) {
    require PAGI::Simple::Request;
    $self->{req} //= PAGI::Simple::Request->new(scope => $self->{scope});
}
sub query_param ($self, $name)  { $self->_req->query_param($name) }
sub query_params ($self, $name) { $self->_req->query_params($name) }
sub is_closed ($self)   { $self->{closed} ? 1 : 0 }
sub pubsub ($self)      { $self->{app}->pubsub }

sub on ($self, $event, $cb) {
    die "websocket on: unknown event '$event' (message, close or error)\n" unless $self->{handlers}{$event};
    push @{ $self->{handlers}{$event} }, $cb;
    return $self;
}

sub _track ($self, $f) {
    @{ $self->{pending} } = grep { !$_->is_ready } @{ $self->{pending} };
    push @{ $self->{pending} }, $f;
    return $f;
}

sub send ($self, $data, %opt) {
    return Future->done if $self->{closed};
    my $event = $opt{binary}
        ? { type => 'websocket.send', bytes => PAGI::Simple::Context::_bytes($data) }
        : { type => 'websocket.send', text => "$data" };
    return $self->_track($self->{send}->($event));
}

sub close ($self, $code = 1000, $reason = '') {
    return Future->done if $self->{closed}++;
    return $self->_track($self->{send}->({ type => 'websocket.close', code => $code, reason => $reason }));
}

my $JSON = JSON::MaybeXS->new(utf8 => 0, canonical => 1, allow_nonref => 1, convert_blessed => 1);

# The in-memory path: a member's callback sends what was broadcast.
sub _deliver ($self) {
    weaken(my $weak = $self);
    return sub ($message, @) {
        return unless $weak && !$weak->{closed};
        $message = $JSON->encode($message) if ref $message;
        # Broadcasts can arrive between subscribing and the accept; they wait for it.
        return push @{ $weak->{queued} }, $message unless $weak->{accepted};
        $weak->send($message);
    };
}

sub _route_channel ($self) { "ws-route:$self->{route_key}" }

# The engine path ({groups}: the PAGI::Simple::PubSub::Server of the
# server's hub): the connection itself is a member of the group, joined and
# left with groups.* events on its own $send.
sub _group_join ($self, $group) { $self->_track($self->{groups}->_join_member($self, $group)) }
sub _group_leave ($self, $group) {
    my $f = $self->{groups}->_leave_member($self, $group, !$self->{gone});
    $self->_track($f) if $f;
}
# The backend made this connection leave a group (room_remove, unsubscribe).
sub _left_group ($self, $group) {
    delete $self->{rooms}{$1} if $group =~ /\Aroom:(.*)\z/s;
    $self->_group_leave($group);
}

sub join ($self, $room) {
    if ($self->{groups}) {
        $self->_group_join("room:$room") unless $self->{rooms}{$room};
    }
    else {
        $self->pubsub->room_add($room, $self->{id}, $self->_deliver);
    }
    $self->{rooms}{$room} = 1;
    return $self;
}
sub leave ($self, $room) {
    return $self unless delete $self->{rooms}{$room};
    if ($self->{groups}) { $self->_group_leave("room:$room") }
    else { $self->pubsub->room_remove($room, $self->{id}) }
    return $self;
}
sub leave_all ($self) { $self->leave($_) for keys %{ $self->{rooms} }; $self }
sub rooms ($self) { [ sort keys %{ $self->{rooms} } ] }
sub in_room ($self, $room) { $self->{rooms}{$room} ? 1 : 0 }
sub room_count ($self, $room) { $self->pubsub->room_count($room) }
sub room_cluster_count ($self, $room) { $self->pubsub->room_cluster_count($room) }

sub broadcast ($self, @args) { $self->_broadcast(1, @args) }
sub broadcast_all ($self, @args) { $self->_broadcast(0, @args) }
sub broadcast_others ($self, $room, $msg) { $self->_broadcast(1, $room, $msg) }

sub _broadcast ($self, $exclude_self, @args) {
    die "broadcast takes (\$message) or (\$room, \$message)\n" unless @args == 1 || @args == 2;
    if (my $groups = $self->{groups}) {
        my $group = @args == 1 ? $self->_route_channel : "room:$args[0]";
        my ($n, $f) = $groups->_publish($group, PAGI::Simple::PubSub::Server::_encode($group, $args[-1]),
            from => $self, exclude_self => $exclude_self);
        $self->_track($f);
        return $n;
    }
    my @exclude = $exclude_self ? (exclude => $self->{id}) : ();
    return $self->pubsub->publish($self->_route_channel, $args[0], @exclude) if @args == 1;
    return $self->pubsub->room_send($args[0], $args[1], @exclude);
}

sub _fire ($self, $event, @args) {
    for my $cb (@{ $self->{handlers}{$event} }) {
        my $r = eval { $cb->(@args) };
        if (my $err = $@) {
            die $err if $event eq 'error';
            $self->_error($err);
            next;
        }
        $self->_track($r) if blessed($r) && $r->isa('Future');
    }
}

sub _error ($self, $err) {
    warn "websocket handler error: $err" unless @{ $self->{handlers}{error} };
    eval { $self->_fire(error => $err); 1 } or warn "websocket error callback failed: $@";
    $self->close(1011, 'Internal error');
}

# Runs a whole connection; called by PAGI::Simple after it matched the route.
async sub run ($self, $handler) {
    my ($receive, $send) = @$self{qw(receive send)};
    my $connect = await $receive->();
    return unless ($connect->{type} // '') eq 'websocket.connect';
    my $groups = $self->{groups};
    # In memory: subscribed before accepting, so a client that saw the 101 already gets the route's broadcasts.
    $self->pubsub->subscribe($self->_route_channel, $self->_deliver, $self->{id}) unless $groups;
    my $accepted = eval { await $send->({ type => 'websocket.accept' }); 1 };
    unless ($accepted) {
        my $err = $@;
        $self->pubsub->unsubscribe($self->_route_channel, $self->{id}) unless $groups;
        die $err;
    }
    $self->{accepted} = 1;
    # The engine takes members once accepted; the join is in place before the handler runs.
    $self->_group_join($self->_route_channel) if $groups;
    $self->send($_) for @{ delete $self->{queued} || [] };
    my $ok = eval {
        my $r = $handler->($self);
        await $r if blessed($r) && $r->isa('Future');
        1;
    };
    $self->_error($@) unless $ok;
    my ($code, $reason) = (1005, '');
    while (1) {
        my $ev = await $receive->();
        my $type = $ev->{type} // '';
        if ($type eq 'websocket.receive') {
            $self->_fire(message => $ev->{text} // $ev->{bytes}) unless $self->{closed};
        }
        elsif ($type eq 'websocket.disconnect') { ($code, $reason) = ($ev->{code} // 1005, $ev->{reason} // ''); last }
        else { last }
    }
    $self->{closed} = 1;
    # The engine already took the connection out of its groups.
    $self->{gone} = 1;
    if ($groups) { $groups->_member_remove($self->_route_channel, $self->{id}) }
    else { $self->pubsub->unsubscribe($self->_route_channel, $self->{id}) }
    $self->leave_all;
    $self->_fire(close => $code, $reason);
    await Future->wait_all(@{ $self->{pending} }) if @{ $self->{pending} };
    return;
}

1;
