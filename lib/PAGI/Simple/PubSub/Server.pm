package PAGI::Simple::PubSub::Server;
use v5.36;
use parent 'PAGI::Simple::PubSub';
use Carp ();
use Future;
use JSON::MaybeXS ();
use Scalar::Util qw(blessed refaddr weaken);

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::PubSub::Server - L<PAGI::Simple::PubSub> on the server's C<groups> extension (engine fan-out, Redis across workers)

=head1 SYNOPSIS

    # Nothing to do: under pagi-server a PAGI::Simple app that was not given
    # a pubsub backend switches to this one on its first request.
    #   pagi-server --app app.pl --workers 4 --pubsub redis://127.0.0.1:6379/0

    $app->pubsub->room_send(lobby => 'the server says hi');        # every member, every worker
    my $id = $app->pubsub->subscribe(jobs => sub ($message, $channel) { ... });
    $app->pubsub->publish(jobs => { id => 7 });                    # a hashref comes back a hashref
    my $here = $app->pubsub->room_count('lobby');                  # this process, now
    my $all  = await $app->pubsub->room_cluster_count('lobby');   # every worker and machine

    # Or explicitly, e.g. when embedding PAGI::Server:
    my $app = PAGI::Simple->new(pubsub => PAGI::Simple::PubSub::Server->for_hub($server->groups));

=head1 DESCRIPTION

A backend of the L<PAGI::Simple::PubSub> interface on a
L<PAGI::Server::Groups> hub (the C<hub> of C<< $scope->{extensions}{groups} >>).
Channels and rooms are the hub's groups, under the names the in-memory
backend uses: room C<NAME> is group C<room:NAME>, a WebSocket route's
broadcast group is C<ws-route:PATH>, SSE channel C<NAME> is C<sse:NAME>;
any other channel is a group of the same name.

PAGI::Simple's WebSocket connections and SSE streams (C<< $ws->join >>,
C<< $sse->subscribe >>) are engine members of those groups: a message is
encoded once and written to every member by the engine, with no Perl per
member. Perl callbacks (C<subscribe>, C<room_add>) are hub subscribers of
the group. With the server's redis backend (C<--pubsub redis://...>) both
hear what any worker or machine publishes.

=head2 Messages

Perl values cross the hub serialised, so every kind of member gets what
it expects:

=over

=item * a string goes as C<text>: a WebSocket text frame (characters), the
string for Perl callbacks;

=item * a reference goes as its JSON: a WebSocket text frame holding the
JSON, and the structure again for Perl callbacks (the text carries the
marker C<< event => 'pagi.simple.json' >>, which WebSocket members do not
see);

=item * on C<sse:> channels a message is an SSE event: the
C<< { _pagi_sse => 1, event => { data, event, id } } >> of
C<< $sse->publish >> and C<< $app->sse_publish >> keeps its C<event>, C<id>
(and C<retry>) fields, a reference as data is its JSON, anything else is
the data. Perl callbacks of an C<sse:> channel always get
C<< { _pagi_sse => 1, event => { data => $text, event, id, retry } } >>
(the data as the text the streams got).

=back

=head2 Counts and return values

The hub counts connection members in this process synchronously
(C<< $hub->count >>) and cluster-wide in a Future (C<< $hub->cluster_count >>:
with Redis the sum over live nodes). So:

=over

=item publish, room_send: receivers reached I<in this process>

The local connection members of the group plus the local Perl
subscribers, minus the excluded one. The message is also delivered to
other workers, which this count does not include. Delivery is
asynchronous (Perl callbacks run once the engine handed the message
back), unlike the in-memory backend's.

A publish that fails (for example C<groups.publish: redis unavailable: ...>
while Redis is away; local members still got it) is warned about, never
lost silently.

=item room_count($room), subscribers($channel)

Local connection members plus local Perl subscribers, now.

=item room_cluster_count($room), cluster_subscribers($channel)

A Future: the connection members across the cluster (the local count
without Redis) plus this process's Perl subscribers. This node's part is
current; other nodes write theirs to Redis shortly (debounced) after it
changes, so a join elsewhere a few milliseconds ago may not be counted yet.

=item room_members($room)

The ids of the members this process's PAGI::Simple knows: its WebSocket
connections in the room (C<< $ws->id >>, in joining order) and the
members added with C<room_add>. Connections that joined the group some
other way (a plain PAGI app's C<groups.join>) and members on other workers
are not listed; C<room_count> and C<room_cluster_count> count them.

=back

C<exclude> takes a subscription id (a Perl subscriber is skipped) or the
id of a PAGI::Simple WebSocket or SSE member in the group (the message is
published from that connection with C<exclude_self>).

=head1 CONSTRUCTORS

=over

=item for_hub($hub)

The one backend of a hub (made on first use; apps of one process share it).

=item new(hub => $hub)

A separate backend on the hub.

=item hub

=back

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 0, canonical => 1, allow_nonref => 1, convert_blessed => 1);
our $REF_EVENT = 'pagi.simple.json';
my %FOR_HUB;    # refaddr of a hub -> { hub, backend }, both weak

sub for_hub ($class, $hub) {
    my $entry = $FOR_HUB{ refaddr($hub) // 0 };
    return $entry->{backend} if $entry && $entry->{hub} && $entry->{hub} == $hub && $entry->{backend};
    my $backend = $class->new(hub => $hub);
    $entry = $FOR_HUB{ refaddr $hub } = { hub => $hub, backend => $backend };
    weaken($entry->{hub});
    weaken($entry->{backend});
    return $backend;
}

sub new ($class, %o) {
    my $hub = $o{hub};
    Carp::croak('PAGI::Simple::PubSub::Server->new: hub => a PAGI::Server::Groups object is required')
        unless blessed($hub) && $hub->can('publish') && $hub->can('subscribe') && $hub->can('count');
    return bless {
        hub      => $hub,
        subs     => {},    # group -> [ [id, callback, second callback argument] ] (Perl subscribers)
        hub_subs => {},    # group -> the hub subscription feeding them
        members  => {},    # group -> { member id -> [order, weak WebSocket/SSE object] }
        excluded => {},    # group -> [ [fingerprint, id] ]: own publishes whose echo skips a subscriber
        next_id  => 0,
        seq      => 0,
    }, $class;
}

sub hub ($self) { $self->{hub} }

# --- messages ---

sub _encode ($channel, $message) {
    if ($channel =~ /\Asse:/) {
        my %e = ref $message eq 'HASH' && $message->{_pagi_sse} ? %{ $message->{event} || {} } : (data => $message);
        my $data = $e{data} // '';
        $data = $JSON->encode($data) if ref $data;
        my %m = (text => "$data");
        for my $k (qw(event id)) { $m{$k} = "$e{$k}" if defined $e{$k} && length $e{$k} }
        $m{retry} = 0 + $e{retry} if defined $e{retry};
        return \%m;
    }
    return { text => $JSON->encode($message), event => $REF_EVENT } if ref $message;
    return { text => $message // '' };
}

sub _decode ($group, $m) {
    my $data = $m->{text} // $m->{bytes};
    if ($group =~ /\Asse:/) {
        return { _pagi_sse => 1, event => { data => $data, map { defined $m->{$_} ? ($_ => $m->{$_}) : () } qw(event id retry) } };
    }
    if (($m->{event} // '') eq $REF_EVENT && defined $m->{text}) {
        my $value;
        return $value if eval { $value = $JSON->decode($m->{text}); 1 };
    }
    return $data;
}

sub _fingerprint ($m) { join "\0", map { defined $m->{$_} ? "+$m->{$_}" : '-' } qw(text bytes event id retry) }

sub _watch ($f, $what) {
    $f->on_fail(sub ($error, @) {
        $error =~ s/\s+\z//;
        warn "PAGI::Simple::PubSub::Server: $what failed: $error\n";
    });
    return $f;
}

# --- publishing ---

sub publish ($self, $channel, $message, %opt) {
    my $m = _encode($channel, $message);
    my $exclude = $opt{exclude};
    return scalar $self->_publish($channel, $m) unless defined $exclude;
    if (my $member = $self->_member($channel, $exclude)) {
        return scalar $self->_publish($channel, $m, from => $member, exclude_self => 1);
    }
    if (grep { $_->[0] eq $exclude } @{ $self->{subs}{$channel} || [] }) {
        return scalar $self->_publish($channel, $m, exclude_perl => $exclude);
    }
    return scalar $self->_publish($channel, $m);
}

# One message to a group. from: a PAGI::Simple WebSocket/SSE object whose
# $send publishes (so exclude_self can skip its connection). Returns the
# local receiver count, and in list context also the Future.
sub _publish ($self, $group, $m, %o) {
    my $n = $self->{hub}->count($group) + scalar @{ $self->{subs}{$group} || [] };
    my $f;
    if (my $from = $o{from}) {
        $n-- if $o{exclude_self} && $self->{members}{$group} && $self->{members}{$group}{ $from->id };
        $f = $from->{send}->({ type => 'groups.publish', group => $group, %$m, ($o{exclude_self} ? (exclude_self => 1) : ()) });
    }
    else {
        my $fifo;
        if (defined $o{exclude_perl}) {
            # The hub hands our own publish back in order; its echo skips this subscriber.
            $fifo = $self->{excluded}{$group} //= [];
            push @$fifo, [ _fingerprint($m), $o{exclude_perl} ];
            shift @$fifo while @$fifo > 1000;
            $n--;
        }
        $f = $self->{hub}->publish($group, $m);
        pop @$fifo if $fifo && @$fifo && $f->is_failed && $fifo->[-1][1] eq $o{exclude_perl};
    }
    _watch($f, "publish to '$group'");
    $n = 0 if $n < 0;
    return wantarray ? ($n, $f) : $n;
}

# --- Perl subscribers ---

sub _receiver ($self, $group) {
    weaken(my $weak = $self);
    return sub ($m) {
        my $self = $weak or return;
        my $skip = '';
        if (my $fifo = $self->{excluded}{$group}) {
            if (@$fifo && ($m->{node} // '') eq $self->{hub}->node && $fifo->[0][0] eq _fingerprint($m)) {
                $skip = (shift @$fifo)->[1];
            }
            delete $self->{excluded}{$group} unless @$fifo;
        }
        my $value = _decode($group, $m);
        for my $sub (@{ [ @{ $self->{subs}{$group} || [] } ] }) {    # a copy: callbacks may unsubscribe
            next if $sub->[0] eq $skip;
            eval { $sub->[1]->($value, $sub->[2]); 1 } or warn "pubsub callback on '$group' failed: $@";
        }
    };
}

sub _add ($self, $group, $cb, $id, $arg) {
    Carp::croak("PAGI::Simple::PubSub::Server: the callback for '$group' must be a code reference") unless ref $cb eq 'CODE';
    # Its own prefix: ids adopted from the in-memory hub ('subN') stay unique.
    $id //= 'server-sub' . ++$self->{next_id};
    my $subs = $self->{subs}{$group} //= [];
    @$subs = grep { $_->[0] ne $id } @$subs;
    push @$subs, [ $id, $cb, $arg ];
    $self->{hub_subs}{$group} //= $self->{hub}->subscribe($group, $self->_receiver($group));
    return $id;
}

sub subscribe ($self, $channel, $cb, $id = undef) { $self->_add($channel, $cb, $id, $channel) }

sub unsubscribe ($self, $channel, $id) {
    my $n = 0;
    if (my $subs = $self->{subs}{$channel}) {
        my $before = @$subs;
        @$subs = grep { $_->[0] ne $id } @$subs;
        $n = $before - @$subs;
        unless (@$subs) {
            delete $self->{subs}{$channel};
            delete $self->{excluded}{$channel};
            $self->{hub}->unsubscribe(delete $self->{hub_subs}{$channel});
        }
    }
    # A PAGI::Simple connection: it leaves the group.
    if (my $member = $self->_member($channel, $id)) { $member->_left_group($channel); $n++ }
    return $n;
}

sub unsubscribe_all ($self, $id) {
    my $n = 0;
    my %groups = map { $_ => 1 } keys %{ $self->{subs} }, keys %{ $self->{members} };
    $n += $self->unsubscribe($_, $id) for sort keys %groups;
    return $n;
}

sub room_add ($self, $room, $member, $cb) { $self->_add("room:$room", $cb, $member, $room); 1 }
sub room_remove ($self, $room, $member) { $self->unsubscribe("room:$room", $member) }
sub room_send ($self, $room, $message, %opt) { $self->publish("room:$room", $message, %opt) }

sub room_members ($self, $room) {
    my $group = "room:$room";
    my $members = $self->{members}{$group} || {};
    return [ (sort { $members->{$a}[0] <=> $members->{$b}[0] } grep { $members->{$_}[1] } keys %$members),
        map { $_->[0] } @{ $self->{subs}{$group} || [] } ];
}

sub room_count ($self, $room) { $self->subscribers("room:$room") }
sub room_cluster_count ($self, $room) { $self->cluster_subscribers("room:$room") }

sub subscribers ($self, $channel) { $self->{hub}->count($channel) + scalar @{ $self->{subs}{$channel} || [] } }

sub cluster_subscribers ($self, $channel) {
    my $perl = scalar @{ $self->{subs}{$channel} || [] };
    return $self->{hub}->cluster_count($channel)->then(sub ($n, @) { Future->done($n + $perl) });
}

sub channels ($self) {
    my %seen = map { $_ => 1 } keys %{ $self->{subs} }, grep { %{ $self->{members}{$_} } } keys %{ $self->{members} };
    return [ sort grep { !/\Aroom:/ } keys %seen ];
}

sub has_channel ($self, $channel) {
    return 1 if $self->{subs}{$channel} || ($self->{members}{$channel} && %{ $self->{members}{$channel} });
    return $self->{hub}->count($channel) ? 1 : 0;
}

# --- PAGI::Simple's engine members (WebSocket connections, SSE streams) ---

sub _member_add ($self, $group, $obj) {
    my $list = $self->{members}{$group} //= {};
    return if $list->{ $obj->id };
    $list->{ $obj->id } = [ ++$self->{seq}, $obj ];
    weaken($list->{ $obj->id }[1]);
}

# A PAGI::Simple WebSocket or SSE object joins $group in the engine with a
# groups.join on its own $send: the watched Future of that event.
sub _join_member ($self, $obj, $group) {
    $self->_member_add($group, $obj);
    return _watch($obj->{send}->({ type => 'groups.join', group => $group }), "join '$group'");
}

# It leaves; the groups.leave event only while its connection still runs
# ($tell_engine false: the stream's end takes it out of every group): the
# watched Future of that event, or undef.
sub _leave_member ($self, $obj, $group, $tell_engine) {
    $self->_member_remove($group, $obj->id);
    return undef unless $tell_engine;
    return _watch($obj->{send}->({ type => 'groups.leave', group => $group }), "leave '$group'");
}

sub _member_remove ($self, $group, $id) {
    my $list = $self->{members}{$group} or return 0;
    my $gone = delete $list->{$id};
    delete $self->{members}{$group} unless %$list;
    return $gone ? 1 : 0;
}

sub _member ($self, $group, $id) {
    my $list = $self->{members}{$group} or return undef;
    my $entry = $list->{$id} or return undef;
    return $entry->[1];
}

# Subscriptions an app made on its in-memory hub before it switched here
# (at load time, in lifespan startup) move over, with their ids.
sub _adopt ($self, $memory) {
    my $channels = $memory->{channels} || {};
    for my $channel (sort keys %$channels) {
        for my $sub (@{ delete $channels->{$channel} }) {
            if ($channel =~ /\Aroom:(.*)\z/s) { $self->room_add($1, $sub->[0], $sub->[1]) }
            else { $self->subscribe($channel, $sub->[1], $sub->[0]) }
        }
    }
}

1;
