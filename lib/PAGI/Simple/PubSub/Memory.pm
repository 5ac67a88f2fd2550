package PAGI::Simple::PubSub::Memory;
use v5.36;
use parent 'PAGI::Simple::PubSub';

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::PubSub::Memory - in-process implementation of L<PAGI::Simple::PubSub>

=head1 DESCRIPTION

Channels and rooms live in this process only; callbacks run synchronously
inside C<publish>/C<room_send>, in subscription order. Rooms are channels
named C<room:NAME> whose subscription ids are the member ids.

C<room_count> is the number of members; C<room_cluster_count> and
C<cluster_subscribers> are done Futures of the local counts (there is only
this process).

=cut

sub new ($class) { bless { channels => {}, next_id => 0 }, $class }

sub subscribe ($self, $channel, $cb, $id = undef) {
    $id //= 'sub' . ++$self->{next_id};
    my $subs = $self->{channels}{$channel} //= [];
    @$subs = grep { $_->[0] ne $id } @$subs;
    push @$subs, [ $id, $cb ];
    return $id;
}

sub unsubscribe ($self, $channel, $id) {
    my $subs = $self->{channels}{$channel} or return 0;
    my $before = @$subs;
    @$subs = grep { $_->[0] ne $id } @$subs;
    delete $self->{channels}{$channel} unless @$subs;
    return $before - @$subs;
}

sub unsubscribe_all ($self, $id) {
    my $n = 0;
    $n += $self->unsubscribe($_, $id) for keys %{ $self->{channels} };
    return $n;
}

sub publish ($self, $channel, $message, %opt) {
    my $n = 0;
    my $exclude = $opt{exclude} // '';
    for my $sub (@{ [ @{ $self->{channels}{$channel} || [] } ] }) {    # a copy: callbacks may unsubscribe
        next if $sub->[0] eq $exclude;
        $n++;
        eval { $sub->[1]->($message, $channel); 1 } or warn "pubsub callback on '$channel' failed: $@";
    }
    return $n;
}

sub room_add ($self, $room, $member, $cb) { $self->subscribe("room:$room", $cb, $member); 1 }
sub room_remove ($self, $room, $member) { $self->unsubscribe("room:$room", $member) }
sub room_send ($self, $room, $message, %opt) {
    my $n = 0;
    my $exclude = $opt{exclude} // '';
    for my $sub (@{ [ @{ $self->{channels}{"room:$room"} || [] } ] }) {
        next if $sub->[0] eq $exclude;
        $n++;
        eval { $sub->[1]->($message, $room); 1 } or warn "room '$room' callback failed: $@";
    }
    return $n;
}
sub room_count ($self, $room) { scalar @{ $self->{channels}{"room:$room"} || [] } }
sub room_members ($self, $room) { [ map { $_->[0] } @{ $self->{channels}{"room:$room"} || [] } ] }

sub subscribers ($self, $channel) { scalar @{ $self->{channels}{$channel} || [] } }
sub channels ($self) { [ sort grep { !/\Aroom:/ } keys %{ $self->{channels} } ] }
sub has_channel ($self, $channel) { $self->{channels}{$channel} ? 1 : 0 }

1;
