package PAGI::Simple::PubSub;
use v5.36;
use Carp ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::PubSub - the pub/sub interface behind WebSocket rooms and SSE channels

=head1 SYNOPSIS

    my $hub = PAGI::Simple::PubSub->instance;             # PAGI::Simple::PubSub::Memory by default
    my $id  = $hub->subscribe('news', sub ($message, $channel) { ... });
    $hub->publish('news', { text => 'hi' });               # returns 1 receiver
    $hub->publish('news', 'again', exclude => $id);        # everyone but $id
    $hub->unsubscribe('news', $id);

    $hub->room_add('lobby', $member_id, sub ($message, $room) { ... });
    $hub->room_send('lobby', 'hello', exclude => $member_id);
    $hub->room_remove('lobby', $member_id);

=head1 DESCRIPTION

This class is the interface; L<PAGI::Simple::PubSub::Memory> is the default
implementation (one process; nothing crosses worker processes).
L<PAGI::Simple::PubSub::Server> runs on the server's C<groups> extension
(the engine fans out to WebSocket and SSE members; with C<--pubsub
redis://...> across workers and machines): an app that was not given a
backend switches to it by itself when its first request scope carries the
extension (see L<PAGI::Simple/pubsub>). A backend
(Redis, Postgres LISTEN, ...) subclasses this and implements the methods
below; pass it as C<< PAGI::Simple->new(pubsub => $backend) >> or install it
with C<< PAGI::Simple::PubSub->instance($backend) >>.

Messages are Perl values (strings or references); a cross-process backend
serialises them. Subscription ids are opaque strings the backend hands out.

=head1 METHODS (the interface)

=over

=item subscribe($channel, $callback) returns $id

C<< $callback->($message, $channel) >> runs for each message. Errors in a
callback are warned about and do not stop delivery to the others.

=item unsubscribe($channel, $id), unsubscribe_all($id)

=item publish($channel, $message, [exclude => $id]) returns receivers reached

=item room_add($room, $member_id, $callback), room_remove($room, $member_id), room_send($room, $message, [exclude => $member_id]) returns count, room_members($room)

Rooms are named groups of members: a member is in a room at most once.

=item subscribers($channel) (count), channels, has_channel($channel)

=back

=head2 Presence (counts)

These have defaults here, built on the methods above, so older backends
keep working; a backend that knows better overrides them.

=over

=item room_count($room) returns the members of the room in this process

Default: C<< scalar @{ $self->room_members($room) } >>.

=item room_cluster_count($room) returns a Future of the members everywhere

Across every process sharing the backend. Default (a one-process
backend): C<< Future->done($self->room_count($room)) >>.

=item cluster_subscribers($channel) returns a Future of the subscribers everywhere

Default: C<< Future->done($self->subscribers($channel)) >>.

=back

=head2 instance([$backend]), reset

The per-process default hub (created on first use); C<reset> drops it.

=cut

my $INSTANCE;
sub instance ($class, $backend = undef) {
    $INSTANCE = $backend if $backend;
    return $INSTANCE //= do { require PAGI::Simple::PubSub::Memory; PAGI::Simple::PubSub::Memory->new };
}
sub reset ($class) { undef $INSTANCE; 1 }

sub room_count ($self, $room) { scalar @{ $self->room_members($room) } }
sub room_cluster_count ($self, $room) { require Future; Future->done($self->room_count($room)) }
sub cluster_subscribers ($self, $channel) { require Future; Future->done($self->subscribers($channel)) }

for my $method (qw(subscribe unsubscribe unsubscribe_all publish room_add room_remove room_send room_members subscribers channels has_channel)) {
    no strict 'refs';
    *{$method} = sub ($self, @) { Carp::croak(ref($self) . " does not implement '$method' (PAGI::Simple::PubSub interface)") };
}

1;
