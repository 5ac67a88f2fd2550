package PAGI::Server::Scope;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;

=head1 NAME

PAGI::Server::Scope - what the per-scope glue classes share

=head1 DESCRIPTION

Internal to L<PAGI::Server>: the base of L<PAGI::Server::HTTP> (and so
L<PAGI::Server::SSE>) and L<PAGI::Server::WebSocket>. It holds the checks
every C<$send> starts with, the way engine errors become failed Futures
naming the event, and write backpressure.

=cut

# One shared, already-done Future for every $send that need not wait. Its
# class answers Future::AsyncAwait's two questions (ready? the result?)
# itself, so `await $send->(...)` skips two sub calls per await under the
# pure-Perl Future. Everything else is Future's; futures derived from it
# (then, followed_by, ...) are plain Futures.
{
    package PAGI::Server::Scope::Done;
    our @ISA = ('Future');
    sub AWAIT_IS_READY { 1 }
    sub AWAIT_RESULT   { return }
    sub AWAIT_GET      { return }
    sub new            { shift; Future->new(@_) }
}
our $DONE = bless Future->done, 'PAGI::Server::Scope::Done';

# A pending Future for the app: a loop future, so even a blocking ->get
# in an app works (PAGI::Server::Future says why it is not the loop's own).
sub _new_future { ($_[0]{server}{future_class} || $_[0]{server}->_future_class)->new }

# A failed $send: the message names the event and the problem; no location.
sub _fail {
    my ($message) = @_;
    return Future->fail("$message\n", 'pagi');
}

# Engine croaks name their method; the app wants the event's problem.
sub _engine_error {
    my ($event_type, $error) = @_;
    $error =~ s/\APAGI::Server::Native::\w+: //;
    $error =~ s/ at \S+ line \d+\.?\n\z//;
    chomp $error;
    return _fail("$event_type: $error");
}

# The type of a send event, or a failed Future when there is none.
sub _event_type {
    my ($event) = @_;
    return (undef, _fail('send: event must be a hash reference')) unless ref $event eq 'HASH';
    my $type = $event->{type};
    return (undef, _fail("send: event has no 'type' field")) unless defined $type;
    return ($type);
}

# After a body, message or event was queued: a done Future unless the bytes
# buffered before it ($buffered minus the $added it brought) reached the high
# watermark, else one that resolves when the engine reports the drain. So a
# stream of chunks the size of the watermark does not wait on every one:
# memory stays bounded by the watermark plus one chunk.
sub _after_send {
    my ($self, $buffered, $added) = @_;
    $self->{server}->_flush_soon;
    if ($buffered - ($added // 0) >= $self->{server}{high_watermark}) {
        $self->_high_water unless $self->{above_high};
        return $self->{drain_f} //= $self->_new_future if $self->{engine}->wait_writable($self->{id});
        $self->_drained;
    }
    return $DONE;
}

sub _high_water { $_[0]{above_high} = 1 }

sub _drained { $_[0]{above_high} = 0 }

sub _ev_writable {
    my ($self) = @_;
    $self->_drained if $self->{above_high};
    my $f = delete $self->{drain_f} or return;
    $f->done;
}

1;
